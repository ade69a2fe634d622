//! Programs generated at random from the grammar's productions must parse, whatever the
//! examples happen to use; the generator also varies layout (comments, newlines, commas).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use kd_grammar::ast::Declaration;

/// A small deterministic generator (SplitMix64), so a failing seed can be replayed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// Whitespace between tokens: spaces, newlines or comments.
    fn gap(&mut self) -> String {
        match self.below(8) {
            0 => "\n  ".into(),
            1 => " // a comment\n".into(),
            2 => " /* block */ ".into(),
            3 => "\t".into(),
            _ => " ".into(),
        }
    }

    fn name(&mut self) -> String {
        let base = self.pick(&[
            "a",
            "net",
            "t",
            "student_1",
            "_x",
            "mnist",
            "x9",
            "teacher2",
            "dataset",
            "b_b",
        ]);
        base.to_string()
    }

    fn number(&mut self) -> String {
        match self.below(6) {
            0 => format!("{}", self.below(1000)),
            1 => format!("0.{}", self.below(1000)),
            2 => format!("{}e-{}", 1 + self.below(9), self.below(6)),
            3 => format!("-{}", self.below(10)),
            4 => format!(".{}", 1 + self.below(99)),
            _ => format!("{}.{}", self.below(100), self.below(100)),
        }
    }

    fn value(&mut self, depth: usize) -> String {
        match self.below(if depth > 2 { 4 } else { 7 }) {
            0 => self.number(),
            1 => format!("\"{}\"", self.pick(&["data/x.csv", "a b", "q\\\"uote", ""])),
            2 => self.pick(&["true", "false"]).into(),
            3 => self.name(),
            4 => format!("{}deg", self.below(90)),
            5 => {
                let n = self.below(4);
                let items: Vec<String> = (0..n).map(|_| self.value(depth + 1)).collect();
                format!("[{}]", items.join(", "))
            }
            _ => self.call(depth + 1),
        }
    }

    fn call(&mut self, depth: usize) -> String {
        let n = self.below(4);
        let args: Vec<String> = (0..n)
            .map(|_| {
                if self.chance(50) {
                    format!("{}: {}", self.name(), self.value(depth + 1))
                } else {
                    self.value(depth + 1)
                }
            })
            .collect();
        format!("{}({})", self.name(), args.join(", "))
    }

    fn settings(&mut self, depth: usize) -> String {
        let n = self.below(4);
        let mut out = String::from("{");
        for _ in 0..n {
            out.push_str(&self.gap());
            if depth < 2 && self.chance(25) {
                out.push_str(&format!("{} {}", self.name(), self.settings(depth + 1)));
            } else {
                out.push_str(&format!("{}: {}", self.name(), self.value(0)));
            }
            if self.chance(50) {
                out.push(',');
            }
        }
        out.push_str(&self.gap());
        out.push('}');
        out
    }

    fn expr(&mut self, depth: usize) -> String {
        if depth > 3 {
            return self.pick(&["label", "T", "2", "s.logits"]).into();
        }
        match self.below(7) {
            0 => self.number().trim_start_matches('-').to_string(),
            1 => format!("{}.{}", self.name(), self.name()),
            2 => self.name(),
            3 => format!("-{}", self.expr(depth + 1)),
            4 => format!("({})", self.expr(depth + 1)),
            5 => {
                let op = self.pick(&["+", "-", "*", "/", "^"]);
                format!(
                    "{}{}{}{}{}",
                    self.expr(depth + 1),
                    self.gap(),
                    op,
                    self.gap(),
                    self.expr(depth + 1)
                )
            }
            _ => {
                let n = self.below(3);
                let args: Vec<String> = (0..n)
                    .map(|_| {
                        if self.chance(30) {
                            format!("{} = {}", self.name(), self.expr(depth + 1))
                        } else {
                            self.expr(depth + 1)
                        }
                    })
                    .collect();
                format!("{}({})", self.name(), args.join(", "))
            }
        }
    }

    fn layer(&mut self, depth: usize) -> String {
        let body = if depth < 2 && self.chance(10) {
            let n = 1 + self.below(3);
            let inner: Vec<String> = (0..n).map(|_| self.layer(depth + 1)).collect();
            format!("residual {{ {} }}", inner.join(&self.gap()))
        } else if self.chance(50) {
            self.call(1)
        } else {
            self.name()
        };
        if self.chance(20) {
            format!("{body} as {}", self.name())
        } else {
            body
        }
    }

    fn data_ref(&mut self) -> String {
        format!("{}.{}", self.name(), self.name())
    }

    fn declaration(&mut self) -> String {
        match self.below(10) {
            0 => format!(
                "pipeline {}{}",
                self.name(),
                if self.chance(70) {
                    format!(" {}", self.settings(0))
                } else {
                    String::new()
                }
            ),
            1 => format!(
                "data {} = {}{}",
                self.name(),
                self.call(1),
                if self.chance(70) {
                    format!(" {}", self.settings(0))
                } else {
                    String::new()
                }
            ),
            2 => {
                let n = self.below(4);
                let ops: Vec<String> = (0..n)
                    .map(|_| {
                        if self.chance(70) {
                            self.call(1)
                        } else {
                            self.name()
                        }
                    })
                    .collect();
                format!("augment {} {{ {} }}", self.name(), ops.join(", "))
            }
            3 => {
                let n = self.below(6);
                let layers: Vec<String> = (0..n).map(|_| self.layer(0)).collect();
                format!(
                    "model {} {{{}input [{}]{}{}{}}}",
                    self.name(),
                    self.gap(),
                    self.number(),
                    self.gap(),
                    layers.join(&self.gap()),
                    self.gap()
                )
            }
            4 => format!(
                "{} {} = {}{}",
                self.pick(&["teacher", "student"]),
                self.name(),
                self.name(),
                if self.chance(30) {
                    " from \"w.safetensors\""
                } else {
                    ""
                }
            ),
            5 => {
                let params = if self.chance(60) {
                    let n = self.below(3);
                    let ps: Vec<String> = (0..n)
                        .map(|_| format!("{} = {}", self.name(), self.expr(2)))
                        .collect();
                    format!("({})", ps.join(", "))
                } else {
                    String::new()
                };
                format!("loss {}{} = {}", self.name(), params, self.expr(0))
            }
            6 => {
                let n = self.below(8);
                let mut stmts = Vec::new();
                for _ in 0..n {
                    let with = if self.chance(30) {
                        format!(" with {}", self.name())
                    } else {
                        String::new()
                    };
                    stmts.push(match self.below(10) {
                        0 => format!("train {} on {}{with}", self.name(), self.data_ref()),
                        1 => format!(
                            "distill {} -> {} on {}{with}",
                            self.name(),
                            self.name(),
                            self.data_ref()
                        ),
                        2 => format!("loss {}", self.expr(0)),
                        3 => format!("optimizer {}", self.call(1)),
                        4 => format!(
                            "schedule {}",
                            if self.chance(50) {
                                self.call(1)
                            } else {
                                self.name()
                            }
                        ),
                        5 => format!("validate on {}", self.data_ref()),
                        6 => format!(
                            "keep {}",
                            if self.chance(50) {
                                format!("best {}", self.name())
                            } else {
                                "last".into()
                            }
                        ),
                        _ => format!(
                            "{} {}",
                            self.pick(&["epochs", "batch", "clip", "early_stop"]),
                            self.number()
                        ),
                    });
                }
                let sep = if self.chance(50) { ", " } else { "\n  " };
                format!("stage {} {{ {} }}", self.name(), stmts.join(sep))
            }
            7 => {
                let n = self.below(3);
                let more: String = (0..n).map(|_| format!(" + {}", self.name())).collect();
                let without = if self.chance(50) {
                    format!(" without {}", self.name())
                } else {
                    String::new()
                };
                format!(
                    "baseline {} = {} trained like {}{more}{without}",
                    self.name(),
                    self.name(),
                    self.name()
                )
            }
            8 => {
                let n = self.below(3);
                let more: String = (0..n).map(|_| format!(", {}", self.name())).collect();
                let metrics = if self.chance(50) {
                    " { accuracy, f1 }"
                } else {
                    ""
                };
                format!(
                    "evaluate {}{more} on {}{metrics}",
                    self.name(),
                    self.data_ref()
                )
            }
            _ => {
                let to = if self.chance(60) {
                    " to \"a.safetensors\", \"b.safetensors\""
                } else {
                    ""
                };
                format!("export {}{to}", self.name())
            }
        }
    }
}

#[test]
fn random_programs_parse() {
    for seed in 0..2000u64 {
        let mut g = Gen(seed);
        let count = g.below(8);
        let decls: Vec<String> = (0..count).map(|_| g.declaration()).collect();
        let mut text = String::new();
        for d in &decls {
            text.push_str(d);
            text.push_str(&g.gap());
            text.push('\n');
        }
        match kd_grammar::parse(&text) {
            Ok(program) => assert_eq!(program.declarations.len(), count, "seed {seed}:\n{text}"),
            Err(e) => panic!("seed {seed} does not parse: {e}\n{text}"),
        }
    }
}

#[test]
fn random_corruptions_give_diagnostics_not_panics() {
    for seed in 0..500u64 {
        let mut g = Gen(seed);
        let mut text: String = (0..4).map(|_| g.declaration() + "\n").collect();
        // Cut the program at a random byte (on a char boundary) and splice in junk.
        let mut cut = g.below(text.len().max(1));
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str(g.pick(&["{", "}", "(", "=", "->", "@", "\"", ""]));
        if let Err(e) = kd_grammar::parse(&text) {
            let span = e
                .span()
                .unwrap_or_else(|| panic!("seed {seed}: {e} has no span\n{text}"));
            assert!(
                span.offset() <= text.len(),
                "seed {seed}: span beyond the text"
            );
        }
    }
}

#[test]
fn the_sketch_parses() {
    let text = include_str!("sketch.kd");
    let program = kd_grammar::parse(text).unwrap();
    let stages = program
        .declarations
        .iter()
        .filter(|d| matches!(d, Declaration::Stage(_)))
        .count();
    assert_eq!(stages, 3);
}
