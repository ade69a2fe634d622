//! The `.kd` language's surface: the pest grammar (`kd.pest`) and the parser from text to
//! a spanned AST. Nothing here knows about models or tensors.

pub mod ast;
mod error;
mod format;
mod parser;

pub use error::ParseError;
pub use format::{format, WIDTH};
pub use parser::{parse, parse_value};

/// The grammar's text, for tools that want to show or test it.
pub const GRAMMAR: &str = include_str!("kd.pest");
