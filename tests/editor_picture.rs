//! The README's picture (docs/images/editor.png) can be made on this machine: every example
//! highlighted by vscode-textmate with the extension's grammar, one of kdc check's
//! diagnostics drawn in, screenshotted by headless Chromium (scripts/editor-picture.sh).
//! Chromium comes from Debian (`.ci/run` installs it); a missing one fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::process::Command;

use common::root;

#[test]
fn the_editor_picture_renders_in_headless_chromium() {
    let tools = Command::new(root().join("scripts/editor-tools.sh"))
        .output()
        .unwrap();
    assert!(
        tools.status.success(),
        "{}",
        String::from_utf8_lossy(&tools.stderr)
    );
    let out = std::env::temp_dir().join(format!("kdc-picture-{}.png", std::process::id()));
    let made = Command::new(root().join("scripts/editor-picture.sh"))
        .arg(&out)
        .env("KDC", env!("CARGO_BIN_EXE_kdc"))
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "scripts/editor-picture.sh:\n{}{}",
        String::from_utf8_lossy(&made.stdout),
        String::from_utf8_lossy(&made.stderr)
    );
    let png = std::fs::read(&out).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!(width, 1900);
    assert!(
        height > 2000,
        "every example is on the page: {height} pixels tall"
    );
    // Highlighted text compresses far worse than an empty page (about 1 MB here).
    assert!(png.len() > 300_000, "the picture holds {} bytes", png.len());
    let _ = std::fs::remove_file(&out);
}
