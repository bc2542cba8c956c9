//! A presentation for people: its verify link as a QR code (SVG for the page, modules for the
//! PDF) and a printable one-page PDF carrying the disclosed claims and the code.

use pdf_writer::{Content, Finish, Name, Pdf, Rect, Ref, Str, TextStr};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode, Version};

/// Why a presentation cannot be drawn.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The link does not fit in the largest QR code.
    #[error("the presentation is too long for a QR code: disclose fewer or shorter claims")]
    TooLongForQr,
    /// The disclosed claims and the code do not fit on one page.
    #[error("the disclosed claims do not fit on one printed page with the code: disclose fewer or shorter claims")]
    TooLongForPage,
}

/// A verify link as a QR code.
pub struct VerifyQr {
    code: QrCode,
}

impl VerifyQr {
    /// The code for `link`: error correction M (15 % of the code may be damaged), or L when
    /// the link is too long for M.
    pub fn new(link: &str) -> Result<Self, RenderError> {
        let code = QrCode::with_error_correction_level(link.as_bytes(), EcLevel::M)
            .or_else(|_| QrCode::with_error_correction_level(link.as_bytes(), EcLevel::L))
            .map_err(|_| RenderError::TooLongForQr)?;
        Ok(Self { code })
    }

    /// The QR version (1–40): its size is 17 + 4 × version modules a side.
    pub fn version(&self) -> u8 {
        match self.code.version() {
            Version::Normal(v) | Version::Micro(v) => u8::try_from(v).unwrap_or(u8::MAX),
        }
    }

    /// As SVG, for the page.
    pub fn svg(&self) -> String {
        self.code
            .render::<svg::Color>()
            .min_dimensions(320, 320)
            .quiet_zone(true)
            .build()
    }
}

/// What the PDF shows: the certificate as verified, and the link.
pub struct PrintedCertificate<'a> {
    /// The issuer URL.
    pub issuer: &'a str,
    /// The kind, for people ("Unfit for work").
    pub kind: &'a str,
    /// Issued, for people.
    pub issued_at: &'a str,
    /// Valid until, for people.
    pub valid_until: &'a str,
    /// The disclosed claims as label and text, in order.
    pub claims: &'a [(String, String)],
    /// The verify page (without the presentation).
    pub verify_page: &'a str,
}

/// A4 in points.
const PAGE: (f32, f32) = (595.0, 842.0);
const MARGIN: f32 = 56.0;
const WRAP_CHARS: usize = 88;

/// Text as WinAnsi bytes (the encoding of the standard fonts): ASCII and Latin-1 as they are,
/// anything else as `?`.
fn win_ansi(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match u32::from(c) {
            0x20..=0x7e | 0xa0..=0xff => u8::try_from(u32::from(c)).unwrap_or(b'?'),
            _ => b'?',
        })
        .collect()
}

/// `text` in lines of at most `width` characters, broken at spaces where it can.
fn wrapped(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split(' ') {
            let mut word = word.to_owned();
            while word.chars().count() > width {
                let head: String = word.chars().take(width).collect();
                word = word.chars().skip(width).collect();
                if !line.is_empty() {
                    lines.push(std::mem::take(&mut line));
                }
                lines.push(head);
            }
            if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&word);
        }
        lines.push(line);
    }
    lines
}

/// The one-page PDF: title, issuer, kind, validity, the disclosed claims, and the QR code of
/// the verify link with a line saying where to check it.
pub fn pdf(printed: &PrintedCertificate<'_>, qr: &VerifyQr) -> Result<Vec<u8>, RenderError> {
    // Everything above the code, measured first: what does not fit on the page is refused,
    // never drawn over or cut off.
    let claim_lines: usize = printed
        .claims
        .iter()
        .map(|(_, text)| 1 + wrapped(text, WRAP_CHARS).len())
        .sum();
    let text_height = 20.0 * 1.45
        + 6.0
        + 10.0 * 1.45
        + 13.0 * 1.45
        + 10.0 * 1.45
        + 8.0
        + claim_lines as f32 * 10.0 * 1.45
        + printed.claims.len() as f32 * 4.0;
    let side = ((qr.code.width() + 8) as f32).max(1.0);
    let code_height = (300.0 / side).max(1.2) * side;
    if text_height + 12.0 + code_height + 30.0 > PAGE.1 - 2.0 * MARGIN {
        return Err(RenderError::TooLongForPage);
    }
    let (catalog, pages, page, font, bold, content, info) = (
        Ref::new(1),
        Ref::new(2),
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
        Ref::new(6),
        Ref::new(7),
    );
    let mut pdf = Pdf::new();
    pdf.catalog(catalog).pages(pages);
    pdf.pages(pages).kids([page]).count(1);
    pdf.document_info(info)
        .title(TextStr("Medical certificate"))
        .producer(TextStr("Consult"));
    let mut p = pdf.page(page);
    p.media_box(Rect::new(0.0, 0.0, PAGE.0, PAGE.1));
    p.parent(pages);
    p.contents(content);
    {
        let mut resources = p.resources();
        let mut fonts = resources.fonts();
        fonts.pair(Name(b"F1"), font);
        fonts.pair(Name(b"F2"), bold);
    }
    p.finish();
    for (id, name) in [(font, &b"Helvetica"[..]), (bold, &b"Helvetica-Bold"[..])] {
        pdf.type1_font(id)
            .base_font(Name(name))
            .encoding_predefined(Name(b"WinAnsiEncoding"));
    }

    let mut c = Content::new();
    let mut y = PAGE.1 - MARGIN;
    let line = |c: &mut Content, font: &[u8], size: f32, text: &str, y: &mut f32| {
        c.begin_text();
        c.set_font(Name(font), size);
        c.next_line(MARGIN, *y);
        c.show(Str(&win_ansi(text)));
        c.end_text();
        *y -= size * 1.45;
    };
    line(&mut c, b"F2", 20.0, "Medical certificate", &mut y);
    y -= 6.0;
    line(
        &mut c,
        b"F1",
        10.0,
        &format!("Issuer: {}", printed.issuer),
        &mut y,
    );
    line(&mut c, b"F2", 13.0, printed.kind, &mut y);
    line(
        &mut c,
        b"F1",
        10.0,
        &format!(
            "Issued {}; valid until {}",
            printed.issued_at, printed.valid_until
        ),
        &mut y,
    );
    y -= 8.0;
    for (label, text) in printed.claims {
        line(&mut c, b"F2", 10.0, label, &mut y);
        for part in wrapped(text, WRAP_CHARS) {
            line(&mut c, b"F1", 10.0, &part, &mut y);
        }
        y -= 4.0;
    }

    // The code, black modules on white, 4 modules of quiet zone, at most 300 pt wide and never
    // below 1.2 pt a module (readable from a print at 300 dpi).
    let width = qr.code.width();
    let colors = qr.code.to_colors();
    let side = ((width + 8) as f32).max(1.0);
    let module = (300.0 / side).max(1.2);
    let size = module * side;
    let top = (y - 12.0).min(PAGE.1 - MARGIN);
    let bottom = (top - size).max(MARGIN + 30.0);
    c.set_fill_gray(1.0);
    c.rect(MARGIN, bottom, size, size);
    c.fill_nonzero();
    c.set_fill_gray(0.0);
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (row, col) = (i / width, i % width);
            let x = MARGIN + (col as f32 + 4.0) * module;
            let y_top = bottom + size - (row as f32 + 4.0) * module;
            c.rect(x, y_top - module, module, module);
        }
    }
    c.fill_nonzero();
    let mut y = bottom - 16.0;
    line(
        &mut c,
        b"F1",
        9.0,
        &format!(
            "Scan the code, or open {} and paste the presentation, to check this certificate.",
            printed.verify_page
        ),
        &mut y,
    );
    line(
        &mut c,
        b"F1",
        9.0,
        "Only the claims shown here were disclosed; the issuer's signature covers each of them.",
        &mut y,
    );
    pdf.stream(content, &c.finish());
    Ok(pdf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_outside_latin_1_is_replaced_not_dropped() {
        assert_eq!(win_ansi("Zoë Ł"), b"Zo\xeb ?".to_vec());
    }

    #[test]
    fn long_words_and_lines_wrap_within_the_width() {
        let lines = wrapped(&format!("short {} end", "x".repeat(25)), 10);
        assert!(lines.iter().all(|l| l.chars().count() <= 10), "{lines:?}");
        assert_eq!(
            lines.concat().replace(' ', ""),
            format!("short{}end", "x".repeat(25))
        );
    }

    #[test]
    fn claims_that_do_not_fit_on_the_page_are_refused_not_drawn_over() {
        let qr = VerifyQr::new("https://clinic.example/verify#abc").unwrap();
        let fits = [("Note".to_owned(), "A short note.".to_owned())];
        let long = [("Note".to_owned(), "line\n".repeat(200))];
        let printed = |claims: &'static [(String, String)]| PrintedCertificate {
            issuer: "https://clinic.example",
            kind: "Unfit for work",
            issued_at: "1 December 2026",
            valid_until: "1 December 2027",
            claims,
            verify_page: "https://clinic.example/verify",
        };
        let fits: &'static [(String, String)] = Box::leak(Box::new(fits));
        let long: &'static [(String, String)] = Box::leak(Box::new(long));
        assert!(pdf(&printed(fits), &qr).unwrap().starts_with(b"%PDF-"));
        assert!(matches!(
            pdf(&printed(long), &qr),
            Err(RenderError::TooLongForPage)
        ));
    }

    #[test]
    fn a_link_too_long_for_any_qr_code_is_refused() {
        assert!(VerifyQr::new(&"a".repeat(3000)).is_err());
        let qr = VerifyQr::new("https://clinic.example/verify#abc").unwrap();
        assert!((1..=40).contains(&qr.version()));
        assert!(qr.svg().starts_with("<?xml"));
    }
}
