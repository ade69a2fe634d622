//! `protoc ARGS...`: runs the protoc binary of `protoc-bin-vendored` with ARGS and exits
//! with its status.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let protoc = match protoc_bin_vendored::protoc_bin_path() {
        Ok(path) => path,
        Err(e) => {
            eprintln!("protoc-shim: no vendored protoc for this platform: {e}");
            return ExitCode::from(2);
        }
    };
    match Command::new(&protoc).args(std::env::args_os().skip(1)).status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("protoc-shim: cannot run {}: {e}", protoc.display());
            ExitCode::from(2)
        }
    }
}
