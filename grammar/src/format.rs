//! `kdc fmt`: a program's canonical layout (docs/language.md, "Layout").
//!
//! The printer works from the AST and reads the source only for what the AST does not
//! keep: the text of number and string literals (`2e-3` stays `2e-3`), which items the
//! user put on one line, blank lines, and comments (the grammar drops them; they are
//! found again between the spans and put back where they were written).
//!
//! The rules: two-space indentation; a block (`{ ... }`) stays on one line when it was
//! written on one line and fits in 100 columns, else one line per source line of items,
//! split to one item per line where a line would pass 100 columns; settings, statements
//! and metrics on one line are separated by `, `, layers, augmentations and ONNX ports by
//! a space; at most one blank line in a row; trailing comments of a paragraph aligned two
//! columns after its longest commented line; a loss that does not fit on one line breaks
//! after `=` with one term of its top-level sum per line.

use crate::ast::*;
use crate::error::ParseError;

/// The widest line the layout aims for.
pub const WIDTH: usize = 100;
const INDENT: usize = 2;

/// `source` in its canonical layout, or the syntax error `kdc check` would report.
pub fn format(source: &str) -> Result<String, ParseError> {
    let program = crate::parse(source)?;
    let found = comments(source);
    let mut printer = Printer {
        source,
        comments: &found,
        lines: Vec::new(),
    };
    for decl in &program.declarations {
        printer.declaration(decl);
    }
    Ok(render(source, printer.lines, &found))
}

/// One output line before comments are placed: its code and the source range it came
/// from (`start`: where its first item starts; `end`: where its last item ends).
#[derive(Debug, Clone)]
struct Line {
    indent: usize,
    text: String,
    start: usize,
    end: usize,
    /// A closing brace: comments just before it belong inside its block.
    closes: bool,
}

/// A comment in the source.
#[derive(Debug, Clone)]
struct Comment {
    start: usize,
    end: usize,
    /// Only whitespace before it on its line.
    own_line: bool,
}

/// Every comment of `source`, in order (strings skipped).
fn comments(source: &str) -> Vec<Comment> {
    let bytes = source.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    // Whether this line has code before the current position (comments do not count).
    let mut code_on_line = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                code_on_line = false;
                i += 1;
            }
            b'"' => {
                code_on_line = true;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') || bytes.get(i + 1) == Some(&b'*') => {
                let start = i;
                let end = if bytes[i + 1] == b'/' {
                    // A line comment ends at its last visible character (not at a `\r` or
                    // trailing spaces), so spans trimmed to code see where it ends.
                    let line_end = source[i..].find('\n').map_or(source.len(), |n| i + n);
                    i + source[i..line_end].trim_end().len()
                } else {
                    source[i + 2..]
                        .find("*/")
                        .map_or(source.len(), |n| i + 2 + n + 2)
                };
                found.push(Comment {
                    start,
                    end,
                    own_line: !code_on_line,
                });
                // After a block comment over several lines, the line it ends on has no code yet.
                if source[start..end].contains('\n') {
                    code_on_line = false;
                }
                i = end;
            }
            b' ' | b'\t' | b'\r' => i += 1,
            _ => {
                code_on_line = true;
                i += 1;
            }
        }
    }
    found
}

/// Whether `source[a..b]` holds a blank line.
fn blank_between(source: &str, a: usize, b: usize) -> bool {
    if a >= b || b > source.len() {
        return false;
    }
    let gap = &source[a..b];
    let mut newlines = 0;
    for c in gap.chars() {
        match c {
            '\n' => {
                newlines += 1;
                if newlines >= 2 {
                    return true;
                }
            }
            c if c.is_whitespace() => {}
            _ => newlines = 0,
        }
    }
    false
}

/// The lines with their comments, aligned, joined.
fn render(source: &str, lines: Vec<Line>, comments: &[Comment]) -> String {
    // Each comment goes to the line it trails, or before the line it precedes.
    let mut trailing: Vec<Vec<&Comment>> = vec![Vec::new(); lines.len()];
    let mut before: Vec<Vec<&Comment>> = vec![Vec::new(); lines.len() + 1];
    let inside = |l: &Line, c: &Comment| l.start < c.start && c.end <= l.end;
    // A line printed from source lines that hold a comment of their own cannot keep that
    // comment in place: every comment inside it goes before it, in order.
    let spread: Vec<bool> = lines
        .iter()
        .map(|l| comments.iter().any(|c| c.own_line && inside(l, c)))
        .collect();
    for c in comments {
        let next = lines
            .iter()
            .position(|l| l.start >= c.end)
            .unwrap_or(lines.len());
        let last = lines.iter().rposition(|l| l.start <= c.start);
        match (c.own_line, last) {
            (_, Some(l)) if spread[l] && inside(&lines[l], c) => before[l].push(c),
            (false, Some(l)) => trailing[l].push(c),
            _ => before[next].push(c),
        }
    }
    // Trailing comments share a line until a `//` one ends it; the ones after it go on
    // lines of their own before the next line.
    for index in 0..lines.len() {
        if let Some(cut) = trailing[index]
            .iter()
            .position(|c| source[c.start..].starts_with("//"))
        {
            let rest: Vec<&Comment> = trailing[index].drain(cut + 1..).collect();
            before[index + 1].splice(0..0, rest);
        }
    }
    // Paragraphs (runs of lines at one indent without a blank line or a comment line
    // between them) align their trailing comments.
    let mut out: Vec<(usize, String, Option<String>, usize)> = Vec::new();
    let mut previous_end: Option<usize> = None;
    let emit_blank = |out: &mut Vec<(usize, String, Option<String>, usize)>,
                      previous_end: Option<usize>,
                      start: usize| {
        if let Some(end) = previous_end {
            // No blank line right after a `{`.
            if blank_between(source, end, start)
                && out
                    .last()
                    .is_some_and(|l| !l.1.is_empty() && !l.1.ends_with('{'))
            {
                out.push((0, String::new(), None, 0));
            }
        }
    };
    for (index, line) in lines.iter().enumerate() {
        for c in &before[index] {
            emit_blank(&mut out, previous_end, c.start);
            let indent = line.indent + if line.closes { INDENT } else { 0 };
            out.push((
                indent,
                source[c.start..c.end].trim_end().to_string(),
                None,
                1,
            ));
            previous_end = Some(c.end);
        }
        // A block's first line and its closing brace take no blank line before them.
        let opens_after =
            index > 0 && lines[index - 1].text.ends_with('{') && before[index].is_empty();
        if !line.closes && !opens_after {
            emit_blank(&mut out, previous_end, line.start);
        }
        let trail = match trailing[index].as_slice() {
            [] => None,
            cs => Some(
                cs.iter()
                    .map(|c| source[c.start..c.end].trim_end())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
        };
        out.push((line.indent, line.text.clone(), trail, 0));
        previous_end = Some(
            trailing[index]
                .last()
                .map_or(line.end, |c| c.end.max(line.end)),
        );
    }
    for c in &before[lines.len()] {
        emit_blank(&mut out, previous_end, c.start);
        out.push((0, source[c.start..c.end].trim_end().to_string(), None, 1));
        previous_end = Some(c.end);
    }
    // Alignment: within a paragraph, trailing comments start two columns after the
    // widest commented line, unless that passes the width.
    let mut text = String::new();
    let mut i = 0;
    while i < out.len() {
        let mut j = i;
        while j < out.len()
            && out[j].3 == 0
            && !out[j].1.is_empty()
            && out[j].0 == out[i].0
            && (j == i || !out[j - 1].1.ends_with('{'))
        {
            j += 1;
        }
        if j == i {
            j = i + 1;
        }
        let column = out[i..j]
            .iter()
            .filter(|l| l.2.is_some())
            .map(|l| l.0 + l.1.chars().count())
            .max()
            .unwrap_or(0)
            + 2;
        for (indent, code, trail, _) in &out[i..j] {
            let mut line = format!("{}{code}", " ".repeat(*indent));
            if code.is_empty() {
                line.clear();
            }
            if let Some(trail) = trail {
                let width = line.chars().count();
                let pad = if column + trail.chars().count() <= WIDTH && column > width {
                    column - width
                } else {
                    2
                };
                line.push_str(&" ".repeat(pad));
                line.push_str(trail);
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        i = j;
    }
    text
}

/// An item of a block: its text (possibly a nested block's lines) and source range.
struct Item {
    text: Vec<Line>,
    start: usize,
    end: usize,
}

impl Item {
    fn flat(text: String, start: usize, end: usize) -> Item {
        Item {
            text: vec![Line {
                indent: 0,
                text,
                start,
                end,
                closes: false,
            }],
            start,
            end,
        }
    }

    fn is_flat(&self) -> bool {
        self.text.len() == 1
    }
}

struct Printer<'a> {
    source: &'a str,
    comments: &'a [Comment],
    lines: Vec<Line>,
}

/// How the items of a block are separated on one line.
#[derive(Clone, Copy)]
enum Sep {
    Comma,
    Space,
}

impl Sep {
    fn text(self) -> &'static str {
        match self {
            Sep::Comma => ", ",
            Sep::Space => " ",
        }
    }
}

impl Printer<'_> {
    /// Where the code in `start..end` ends: a span whose rule ends with an optional part
    /// also holds the whitespace and comments pest skipped looking for it.
    fn code_end(&self, start: usize, end: usize) -> usize {
        let mut end = end.min(self.source.len());
        loop {
            let trimmed = start + self.source[start..end].trim_end().len();
            match self
                .comments
                .iter()
                .find(|c| c.end == trimmed && c.start >= start)
            {
                Some(c) => end = c.start,
                None => return trimmed,
            }
        }
    }

    fn flat(&self, text: String, start: usize, end: usize) -> Item {
        Item::flat(text, start, self.code_end(start, end))
    }

    fn text(&self, span: Span) -> &str {
        self.source.get(span.start..span.end).unwrap_or("")
    }

    fn one_line(&self, start: usize, end: usize) -> bool {
        !self.source.get(start..end).unwrap_or("").contains('\n')
    }

    fn push(&mut self, indent: usize, text: String, start: usize, end: usize) {
        let end = self.code_end(start, end);
        self.lines.push(Line {
            indent,
            text,
            start,
            end,
            closes: false,
        });
    }

    /// `head { items }` at `indent`: on one line when the source had it on one line
    /// (`whole` is the block's source range) and it fits; else multi-line.
    fn block(
        &self,
        indent: usize,
        head: &str,
        items: Vec<Item>,
        sep: Sep,
        whole: (usize, usize),
        tail: &str,
    ) -> Vec<Line> {
        let (start, end) = (whole.0, self.code_end(whole.0, whole.1));
        if items.iter().all(Item::is_flat) {
            let inner: Vec<String> = items.iter().map(|i| i.text[0].text.clone()).collect();
            let line = match inner.is_empty() {
                true => format!("{head} {{}}{tail}"),
                false => format!("{head} {{ {} }}{tail}", inner.join(sep.text())),
            };
            if (self.one_line(start, end) || items.is_empty())
                && indent + line.chars().count() <= WIDTH
            {
                return vec![Line {
                    indent,
                    text: line,
                    start,
                    end,
                    closes: false,
                }];
            }
        }
        // The header line ends at its `{`, before any comment that follows it.
        let open = self.code_end(start, items.first().map_or(end, |i| i.start));
        let mut lines = vec![Line {
            indent,
            text: format!("{head} {{"),
            start,
            end: open,
            closes: false,
        }];
        let inner = indent + INDENT;
        let mut row: Vec<&Item> = Vec::new();
        let flush = |row: &mut Vec<&Item>, lines: &mut Vec<Line>| {
            if row.is_empty() {
                return;
            }
            let joined: Vec<&str> = row.iter().map(|i| i.text[0].text.as_str()).collect();
            let text = joined.join(sep.text());
            if inner + text.chars().count() <= WIDTH || row.len() == 1 {
                lines.push(Line {
                    indent: inner,
                    text,
                    start: row[0].start,
                    end: row[row.len() - 1].end,
                    closes: false,
                });
            } else {
                for item in row.iter() {
                    lines.push(Line {
                        indent: inner,
                        text: item.text[0].text.clone(),
                        start: item.start,
                        end: item.end,
                        closes: false,
                    });
                }
            }
            row.clear();
        };
        for (k, item) in items.iter().enumerate() {
            let same_line = k > 0
                && row
                    .last()
                    .is_some_and(|last| self.one_line(last.end, item.start))
                && item.is_flat();
            if !same_line {
                flush(&mut row, &mut lines);
            }
            if item.is_flat() {
                row.push(item);
            } else {
                flush(&mut row, &mut lines);
                lines.extend(item.text.iter().map(|l| Line {
                    indent: l.indent + inner,
                    ..l.clone()
                }));
            }
        }
        flush(&mut row, &mut lines);
        lines.push(Line {
            indent,
            text: format!("}}{tail}"),
            start: end.saturating_sub(1),
            end,
            closes: true,
        });
        lines
    }

    // -----------------------------------------------------------------------------------
    // Values

    fn value(&self, v: &Value) -> String {
        match &v.kind {
            ValueKind::Number { .. } | ValueKind::Str(_) => self.text(v.span).to_string(),
            ValueKind::Bool(b) => b.to_string(),
            ValueKind::Name(n) => n.clone(),
            ValueKind::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|i| self.value(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ValueKind::Call(c) => self.call(c, true),
        }
    }

    /// `name(args)`; with `parens` off, a call without arguments is its bare name.
    fn call(&self, c: &Call, parens: bool) -> String {
        if c.args.is_empty() && !parens {
            return c.name.name.clone();
        }
        let args: Vec<String> = c
            .args
            .iter()
            .map(|a| match &a.name {
                Some(n) => format!("{}: {}", n.name, self.value(&a.value)),
                None => self.value(&a.value),
            })
            .collect();
        format!("{}({})", c.name.name, args.join(", "))
    }

    /// A settings block's items.
    fn settings(&self, settings: &[Setting]) -> Vec<Item> {
        settings
            .iter()
            .map(|s| match &s.value {
                SettingValue::Value(v) => self.flat(
                    format!("{}: {}", s.key.name, self.value(v)),
                    s.span.start,
                    s.span.end,
                ),
                SettingValue::Block(inner) => Item {
                    text: self.block(
                        0,
                        &s.key.name,
                        self.settings(inner),
                        Sep::Comma,
                        (s.span.start, s.span.end),
                        "",
                    ),
                    start: s.span.start,
                    end: s.span.end,
                },
            })
            .collect()
    }

    /// `head` and, when there are any, its settings block.
    fn with_settings(&mut self, head: String, settings: &[Setting], span: Span) {
        if settings.is_empty() {
            self.push(0, head, span.start, span.end);
            return;
        }
        let items = self.settings(settings);
        let lines = self.block(0, &head, items, Sep::Comma, (span.start, span.end), "");
        self.lines.extend(lines);
    }

    // -----------------------------------------------------------------------------------
    // Declarations

    fn declaration(&mut self, decl: &Declaration) {
        match decl {
            Declaration::Pipeline(p) => {
                self.with_settings(format!("pipeline {}", p.name.name), &p.settings, p.span)
            }
            Declaration::Data(d) => self.with_settings(
                format!("data {} = {}", d.name.name, self.call(&d.source, true)),
                &d.settings,
                d.span,
            ),
            Declaration::Augment(a) => {
                let items = a
                    .ops
                    .iter()
                    .map(|op| self.flat(self.call(op, false), op.span.start, op.span.end))
                    .collect();
                let head = format!("augment {}", a.name.name);
                let lines = self.block(0, &head, items, Sep::Space, (a.span.start, a.span.end), "");
                self.lines.extend(lines);
            }
            Declaration::Model(m) => self.model(m),
            Declaration::Role(r) => self.role(r),
            Declaration::Loss(l) => self.loss(l),
            Declaration::Stage(s) => {
                let items = s.statements.iter().map(|st| self.statement(st)).collect();
                let head = format!("stage {}", s.name.name);
                let lines = self.block(0, &head, items, Sep::Comma, (s.span.start, s.span.end), "");
                self.lines.extend(lines);
            }
            Declaration::Baseline(b) => {
                let mut text = format!(
                    "baseline {} = {} trained like {}",
                    b.name.name,
                    b.student.name,
                    b.stages
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
                if !b.without.is_empty() {
                    let names: Vec<&str> = b.without.iter().map(|t| t.name.as_str()).collect();
                    text.push_str(&format!(" without {}", names.join(", ")));
                }
                self.push(0, text, b.span.start, b.span.end);
            }
            Declaration::Evaluate(e) => {
                let head = format!(
                    "evaluate {} on {}",
                    e.models
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    data_ref(&e.data)
                );
                if e.metrics.is_empty() {
                    self.push(0, head, e.span.start, e.span.end);
                } else {
                    let items = e
                        .metrics
                        .iter()
                        .map(|m| self.flat(m.name.clone(), m.span.start, m.span.end))
                        .collect();
                    let lines =
                        self.block(0, &head, items, Sep::Comma, (e.span.start, e.span.end), "");
                    self.lines.extend(lines);
                }
            }
            Declaration::Sweep(w) => {
                let mut items: Vec<Item> = Vec::new();
                if let Some(search) = &w.search {
                    // `search` starts where its keyword does.
                    let start = self.source[..search.span.start]
                        .rfind("search")
                        .unwrap_or(search.span.start);
                    let text = format!("search {}", self.call(search, false));
                    items.push(self.flat(text, start, search.span.end));
                }
                for axis in &w.axes {
                    let values = match &axis.values {
                        SweepValues::List(values) => format!(
                            "[{}]",
                            values
                                .iter()
                                .map(|v| self.value(v))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        SweepValues::Sample(call) => self.call(call, true),
                    };
                    let text = format!("{} in {values}", axis.key.name);
                    items.push(self.flat(text, axis.span.start, axis.span.end));
                }
                if let Some(select) = &w.select {
                    let text = format!(
                        "select {} of {} on {}",
                        select.metric.name,
                        select.model.name,
                        data_ref(&select.data)
                    );
                    items.push(self.flat(text, select.span.start, select.span.end));
                }
                // In the order written, so comments stay beside their statements.
                items.sort_by_key(|item| item.start);
                let head = format!("sweep {}", w.name.name);
                let lines = self.block(0, &head, items, Sep::Comma, (w.span.start, w.span.end), "");
                self.lines.extend(lines);
            }
            Declaration::Export(x) => {
                let mut text = format!("export {}", x.model.name);
                if !x.paths.is_empty() {
                    let paths: Vec<String> = x.paths.iter().map(|p| self.value(p)).collect();
                    text.push_str(&format!(" to {}", paths.join(", ")));
                }
                self.push(0, text, x.span.start, x.span.end);
            }
        }
    }

    fn model(&mut self, m: &ModelDecl) {
        let input = format!(
            "input {}{}",
            if m.tokens { "tokens" } else { "" },
            self.value(&m.input)
        );
        // `input` starts where its keyword does.
        let input_start = self.source[m.name.span.end..m.input.span.start]
            .rfind("input")
            .map_or(m.input.span.start, |n| m.name.span.end + n);
        let mut items = vec![self.flat(input, input_start, m.input.span.end)];
        items.extend(m.layers.iter().map(|l| self.layer(l)));
        let head = format!("model {}", m.name.name);
        let lines = self.block(0, &head, items, Sep::Space, (m.span.start, m.span.end), "");
        self.lines.extend(lines);
    }

    fn layer(&self, l: &LayerNode) -> Item {
        let alias = l
            .alias
            .as_ref()
            .map(|a| format!(" as {}", a.name))
            .unwrap_or_default();
        match &l.kind {
            LayerKind::Call(c) => self.flat(
                format!("{}{alias}", self.call(c, false)),
                l.span.start,
                l.span.end,
            ),
            LayerKind::Residual(body) => {
                let items = body.iter().map(|b| self.layer(b)).collect();
                // The block ends at its `}` (before any alias).
                let close = match &l.alias {
                    Some(a) => self.source[l.span.start..a.span.start]
                        .rfind('}')
                        .map_or(l.span.end, |n| l.span.start + n + 1),
                    None => l.span.end,
                };
                Item {
                    text: self.block(
                        0,
                        "residual",
                        items,
                        Sep::Space,
                        (l.span.start, close),
                        &alias,
                    ),
                    start: l.span.start,
                    end: self.code_end(l.span.start, l.span.end),
                }
            }
        }
    }

    fn role(&mut self, r: &RoleDecl) {
        let role = match r.role {
            RoleKind::Teacher => "teacher",
            RoleKind::Student => "student",
        };
        let head = format!("{role} {} =", r.name.name);
        match &r.source {
            RoleSource::Architecture {
                architecture,
                init_from,
                settings,
            } => {
                let mut text = format!("{head} {}", architecture.name);
                if let Some(v) = init_from {
                    text.push_str(&format!(" from {}", self.value(v)));
                }
                self.with_settings(text, settings, r.span);
            }
            RoleSource::Bert(b) => {
                let text = format!("{head} bert({})", self.value(&b.path));
                self.with_settings(text, &b.settings, r.span);
            }
            RoleSource::Prune(p) => {
                let text = format!("{head} prune({})", p.source.name);
                self.with_settings(text, &p.settings, r.span);
            }
            RoleSource::Quantize(q) => {
                let text = format!(
                    "{head} quantize({}) on {}.{}",
                    q.source.name, q.data.data.name, q.data.split.name
                );
                self.with_settings(text, &q.settings, r.span);
            }
            RoleSource::Onnx(o) => {
                let items = o
                    .ports
                    .iter()
                    .map(|p| {
                        let role = match p.role {
                            OnnxPortRole::Input => "input",
                            OnnxPortRole::Output => "output",
                            OnnxPortRole::Tap => "tap",
                        };
                        let mut text = format!("{role} {}", self.value(&p.value));
                        if let Some(shape) = &p.shape {
                            text.push_str(&format!(" {}", self.value(shape)));
                        }
                        if let Some(a) = &p.alias {
                            text.push_str(&format!(" as {}", a.name));
                        }
                        self.flat(text, p.span.start, p.span.end)
                    })
                    .collect();
                let text = format!("{head} onnx({})", self.value(&o.path));
                let lines = self.block(0, &text, items, Sep::Space, (r.span.start, r.span.end), "");
                self.lines.extend(lines);
            }
        }
    }

    fn loss(&mut self, l: &LossDecl) {
        let params = match l.params.is_empty() {
            true => String::new(),
            false => format!(
                "({})",
                l.params
                    .iter()
                    .map(|p| format!("{} = {}", p.name.name, self.expr(&p.default)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let head = format!("loss {}{params} =", l.name.name);
        let one = format!("{head} {}", self.expr(&l.body));
        if one.chars().count() <= WIDTH {
            self.push(0, one, l.span.start, l.span.end);
            return;
        }
        // One term of the top-level sum per line, the first indented past the others'
        // operators.
        let mut terms: Vec<(Option<BinaryOp>, &Expr)> = Vec::new();
        sum_terms(&l.body, None, &mut terms);
        self.push(0, head, l.span.start, l.name.span.end);
        for (k, (op, term)) in terms.iter().enumerate() {
            // A later term is a right operand: a sum there keeps its parentheses.
            let text = match (&term.kind, k > 0) {
                (ExprKind::Neg(_), true) => format!("({})", self.expr(term)),
                _ => self.expr_in(term, 1, k > 0),
            };
            let (indent, text) = match (k, op) {
                (0, _) | (_, None) => (2 * INDENT, text),
                (_, Some(op)) => (INDENT, format!("{} {text}", op.symbol())),
            };
            self.push(indent, text, term.span.start, term.span.end);
        }
    }

    fn statement(&self, st: &StageStmt) -> Item {
        let flat = |text: String, span: Span| self.flat(text, span.start, span.end);
        match st {
            StageStmt::Train {
                model,
                data,
                augment,
                span,
            } => flat(
                format!(
                    "train {} on {}{}",
                    model.name,
                    data_ref(data),
                    augment
                        .as_ref()
                        .map(|a| format!(" with {}", a.name))
                        .unwrap_or_default()
                ),
                *span,
            ),
            StageStmt::Distill {
                teachers,
                student,
                data,
                augment,
                span,
            } => flat(
                format!(
                    "distill {} -> {} on {}{}",
                    teachers
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    student.name,
                    data_ref(data),
                    augment
                        .as_ref()
                        .map(|a| format!(" with {}", a.name))
                        .unwrap_or_default()
                ),
                *span,
            ),
            StageStmt::Loss(e) => {
                // The statement starts at its keyword, before the expression.
                let start = self.source[..e.span.start]
                    .rfind("loss")
                    .unwrap_or(e.span.start);
                self.flat(format!("loss {}", self.expr(e)), start, e.span.end)
            }
            StageStmt::Optimizer(c) => {
                let start = self.source[..c.span.start]
                    .rfind("optimizer")
                    .unwrap_or(c.span.start);
                self.flat(
                    format!("optimizer {}", self.call(c, false)),
                    start,
                    c.span.end,
                )
            }
            StageStmt::Schedule(c) => {
                let start = self.source[..c.span.start]
                    .rfind("schedule")
                    .unwrap_or(c.span.start);
                self.flat(
                    format!("schedule {}", self.call(c, false)),
                    start,
                    c.span.end,
                )
            }
            StageStmt::Validate(d) => {
                let start = self.source[..d.span.start]
                    .rfind("validate")
                    .unwrap_or(d.span.start);
                self.flat(format!("validate on {}", data_ref(d)), start, d.span.end)
            }
            StageStmt::Keep { best, span } => flat(
                match best {
                    Some(m) => format!("keep best {}", m.name),
                    None => "keep last".to_string(),
                },
                *span,
            ),
            StageStmt::Setting(s) => {
                let value = match &s.value {
                    SettingValue::Value(v) => self.value(v),
                    SettingValue::Block(_) => self.text(s.span).to_string(),
                };
                flat(format!("{} {value}", s.key.name), s.span)
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // Expressions

    fn expr(&self, e: &Expr) -> String {
        self.expr_in(e, 0, false)
    }

    /// `e` where its parent binds at `parent` (0: nothing); `tight` asks for parentheses
    /// at equal binding too (the right side of a left-associative operator).
    fn expr_in(&self, e: &Expr, parent: u8, tight: bool) -> String {
        let own = precedence(e);
        let text = match &e.kind {
            ExprKind::Number(_) => self.text(e.span).to_string(),
            ExprKind::Name(n) => n.name.clone(),
            ExprKind::Member { object, field } => format!("{}.{}", object.name, field.name),
            ExprKind::Call { name, args } => {
                // A schedule's arguments are written as settings are (`from: 8`), a loss's
                // as bindings (`T = 2`).
                let schedule = matches!(
                    name.name.as_str(),
                    "constant" | "linear" | "cosine" | "cubic" | "step"
                ) && args.iter().all(|a| {
                    a.name
                        .as_ref()
                        .is_none_or(|n| matches!(n.name.as_str(), "from" | "to" | "at" | "value"))
                });
                let bind = if schedule { ": " } else { " = " };
                let args: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{}{bind}{}", n.name, self.expr(&a.value)),
                        None => self.expr(&a.value),
                    })
                    .collect();
                format!("{}({})", name.name, args.join(", "))
            }
            ExprKind::Neg(inner) => {
                // Only a power binds tighter than the sign.
                let inner_text = match precedence(inner) {
                    p if p >= 4 => self.expr_in(inner, 3, false),
                    _ => format!("({})", self.expr(inner)),
                };
                format!("-{inner_text}")
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let p = op_precedence(*op);
                let (left, right) = match op {
                    // Right-associative: `a^b^c` is `a^(b^c)`; a sign or a power on the
                    // left needs parentheses, as does a sign on the right.
                    BinaryOp::Pow => (
                        match precedence(lhs) {
                            q if q > 4 => self.expr_in(lhs, p, false),
                            _ => format!("({})", self.expr(lhs)),
                        },
                        match &rhs.kind {
                            ExprKind::Neg(_) => format!("({})", self.expr(rhs)),
                            _ => self.expr_in(rhs, p, false),
                        },
                    ),
                    // A sign right after an operator reads better in parentheses.
                    _ => match &rhs.kind {
                        ExprKind::Neg(_) => {
                            (self.expr_in(lhs, p, false), format!("({})", self.expr(rhs)))
                        }
                        _ => (self.expr_in(lhs, p, false), self.expr_in(rhs, p, true)),
                    },
                };
                match op {
                    BinaryOp::Pow => format!("{left}^{right}"),
                    _ => format!("{left} {} {right}", op.symbol()),
                }
            }
        };
        if own < parent || (tight && own == parent) {
            format!("({text})")
        } else {
            text
        }
    }
}

/// How tightly an expression binds: sums 1, products 2, a sign 3, a power 4, atoms 5.
fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => op_precedence(*op),
        ExprKind::Neg(_) => 3,
        _ => 5,
    }
}

fn op_precedence(op: BinaryOp) -> u8 {
    match op {
        BinaryOp::Add | BinaryOp::Sub => 1,
        BinaryOp::Mul | BinaryOp::Div => 2,
        BinaryOp::Pow => 4,
    }
}

/// The terms of a top-level sum, each with the operator before it.
fn sum_terms<'e>(e: &'e Expr, op: Option<BinaryOp>, out: &mut Vec<(Option<BinaryOp>, &'e Expr)>) {
    match &e.kind {
        ExprKind::Binary {
            op: o @ (BinaryOp::Add | BinaryOp::Sub),
            lhs,
            rhs,
        } => {
            sum_terms(lhs, op, out);
            out.push((Some(*o), rhs));
        }
        _ => out.push((op, e)),
    }
}

fn data_ref(d: &DataRef) -> String {
    format!("{}.{}", d.data.name, d.split.name)
}
