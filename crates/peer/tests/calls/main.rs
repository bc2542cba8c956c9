//! Whole calls between sans-IO peers on the simulated network: media, chat and files over lossy
//! links, and end-to-end encryption. One module per subject, one test binary.

mod e2ee_call;
mod simulated_call;
