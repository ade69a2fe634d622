//! Arbitrary bytes as a text data file in every file layout kdc reads (JSON Lines, JSON,
//! CSV, TSV; with and without header skipping) and as a tokenizer.json's facts. Errors are
//! expected; a panic or an allocation past libFuzzer's limit is a bug.

#![no_main]

use kd_textdata::{decode, parse, tokenizer_facts_of, Format, Layout};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let options = data.first().copied().unwrap_or(0);
    let text = decode(data.to_vec());
    for format in [Format::Jsonl, Format::Json, Format::Csv, Format::Tsv] {
        let layout = Layout {
            format,
            text_field: if options & 1 == 0 { "text".into() } else { "body".into() },
            label_field: "label".into(),
            extension: None,
            skip_headers: options & 2 == 0,
        };
        let _ = parse(&text, &layout, options & 4 == 0);
    }
    let _ = tokenizer_facts_of(&text);
});
