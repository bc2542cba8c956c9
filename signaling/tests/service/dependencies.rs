//! The service builds on a machine with nothing but Rust: no codec library (libopus, libvpx,
//! OpenH264), which needs Debian's `-dev` packages, `pkg-config` or `nasm`, may be in the
//! dependency tree of the `consult` binary. The codecs live in `consult-codec`, which only the
//! media client, the load generator, tests and benchmarks use.

use std::process::Command;

/// Packages that link a C codec library, or the crate that wraps them.
const CODEC_PACKAGES: &[&str] = &[
    "consult-codec",
    "consult-client",
    "consult-load",
    "opus",
    "audiopus_sys",
    "openh264",
    "openh264-sys2",
    "env-libvpx-sys",
    "vpx-sys",
];

fn service_dependencies() -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", "consult-signaling"])
        .args([
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_service_links_no_codec_library() {
    let dependencies = service_dependencies();
    // The tree really was read: the service's own engine crates are in it.
    for expected in ["consult-signaling", "consult-peer", "str0m", "axum", "sqlx"] {
        assert!(
            dependencies.iter().any(|d| d == expected),
            "{expected} missing from the tree: {dependencies:?}"
        );
    }
    let codecs: Vec<&String> = dependencies
        .iter()
        .filter(|d| CODEC_PACKAGES.contains(&d.as_str()))
        .collect();
    assert!(
        codecs.is_empty(),
        "the service depends on codec packages {codecs:?}: it must build with only Rust installed"
    );
}
