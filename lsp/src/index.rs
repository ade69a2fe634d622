//! What a document's names are: every declaration and every use of a declared name, by
//! namespace (a data set and a pipeline may share a name, as in examples/digits.kd), and
//! byte offsets to LSP positions (lines and UTF-16 code units) and back.

use kd_grammar::ast::*;

/// The namespaces of declared names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Pipeline,
    Data,
    Augment,
    Architecture,
    Instance,
    Loss,
    Stage,
}

/// A declared name: where it is declared and where it is used.
#[derive(Clone, Debug)]
pub struct Symbol {
    pub space: Space,
    pub name: String,
    pub def: Span,
    /// The whole declaration.
    pub decl: Span,
    pub uses: Vec<Span>,
}

/// Every declared name of `program`, with its uses.
pub fn symbols(program: &Program) -> Vec<Symbol> {
    let mut defs: Vec<Symbol> = Vec::new();
    let mut def = |space, ident: &Ident, decl: Span| {
        defs.push(Symbol {
            space,
            name: ident.name.clone(),
            def: ident.span,
            decl,
            uses: Vec::new(),
        })
    };
    let mut uses: Vec<(Space, &Ident)> = Vec::new();
    for d in &program.declarations {
        match d {
            Declaration::Pipeline(p) => def(Space::Pipeline, &p.name, p.span),
            Declaration::Data(x) => def(Space::Data, &x.name, x.span),
            Declaration::Augment(a) => def(Space::Augment, &a.name, a.span),
            Declaration::Model(m) => def(Space::Architecture, &m.name, m.span),
            Declaration::Role(r) => {
                def(Space::Instance, &r.name, r.span);
                match &r.source {
                    RoleSource::Architecture { architecture, .. } => {
                        uses.push((Space::Architecture, architecture));
                    }
                    RoleSource::Prune(p) => uses.push((Space::Instance, &p.source)),
                    RoleSource::Quantize(q) => {
                        uses.push((Space::Instance, &q.source));
                        uses.push((Space::Data, &q.data.data));
                    }
                    RoleSource::Onnx(_) | RoleSource::Bert(_) => {}
                }
            }
            Declaration::Loss(l) => {
                def(Space::Loss, &l.name, l.span);
                let params: Vec<&str> = l.params.iter().map(|p| p.name.name.as_str()).collect();
                for p in &l.params {
                    expr_uses(&p.default, &params, &mut uses);
                }
                expr_uses(&l.body, &params, &mut uses);
            }
            Declaration::Stage(s) => {
                def(Space::Stage, &s.name, s.span);
                for st in &s.statements {
                    match st {
                        StageStmt::Train {
                            model,
                            data,
                            augment,
                            ..
                        } => {
                            uses.push((Space::Instance, model));
                            uses.push((Space::Data, &data.data));
                            if let Some(a) = augment {
                                uses.push((Space::Augment, a));
                            }
                        }
                        StageStmt::Distill {
                            teachers,
                            student,
                            data,
                            augment,
                            ..
                        } => {
                            for teacher in teachers {
                                uses.push((Space::Instance, teacher));
                            }
                            uses.push((Space::Instance, student));
                            uses.push((Space::Data, &data.data));
                            if let Some(a) = augment {
                                uses.push((Space::Augment, a));
                            }
                        }
                        StageStmt::Loss(e) => expr_uses(e, &[], &mut uses),
                        StageStmt::Validate(d) => uses.push((Space::Data, &d.data)),
                        _ => {}
                    }
                }
            }
            Declaration::Baseline(b) => {
                def(Space::Instance, &b.name, b.span);
                uses.push((Space::Instance, &b.student));
                uses.extend(b.stages.iter().map(|s| (Space::Stage, s)));
                uses.extend(b.without.iter().map(|t| (Space::Instance, t)));
            }
            Declaration::Evaluate(e) => {
                uses.extend(e.models.iter().map(|m| (Space::Instance, m)));
                uses.push((Space::Data, &e.data.data));
            }
            Declaration::Export(x) => uses.push((Space::Instance, &x.model)),
            // A sweep's keys name declarations inside a dotted text; its selection names
            // a model and a data set.
            Declaration::Sweep(w) => {
                if let Some(select) = &w.select {
                    uses.push((Space::Instance, &select.model));
                    uses.push((Space::Data, &select.data.data));
                }
            }
        }
    }
    for (space, ident) in uses {
        if let Some(s) = defs
            .iter_mut()
            .find(|s| s.space == space && s.name == ident.name)
        {
            s.uses.push(ident.span);
        }
    }
    defs
}

/// Names a loss expression uses: instances in `t.logits`, named losses in calls.
fn expr_uses<'a>(e: &'a Expr, params: &[&str], out: &mut Vec<(Space, &'a Ident)>) {
    match &e.kind {
        ExprKind::Member { object, .. } => out.push((Space::Instance, object)),
        ExprKind::Call { name, args } => {
            if !params.contains(&name.name.as_str()) {
                out.push((Space::Loss, name));
            }
            for a in args {
                expr_uses(&a.value, params, out);
            }
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            expr_uses(lhs, params, out);
            expr_uses(rhs, params, out);
        }
        ExprKind::Neg(inner) => expr_uses(inner, params, out),
        // A named loss may be used by its bare name (`loss ce`); a parameter shadows it.
        ExprKind::Name(name) if !params.contains(&name.name.as_str()) => {
            out.push((Space::Loss, name))
        }
        ExprKind::Number(_) | ExprKind::Name(_) => {}
    }
}

/// The symbol whose declaration or use covers `offset`, and the span there.
pub fn symbol_at(symbols: &[Symbol], offset: usize) -> Option<(&Symbol, Span)> {
    let covers = |s: &Span| s.start <= offset && offset <= s.end;
    symbols.iter().find_map(|sym| {
        if covers(&sym.def) {
            return Some((sym, sym.def));
        }
        sym.uses.iter().find(|u| covers(u)).map(|u| (sym, *u))
    })
}

/// Byte offsets and LSP positions (line, UTF-16 column) of one text.
pub struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str) -> Lines<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines { text, starts }
    }

    pub fn position(&self, offset: usize) -> lsp_types::Position {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let prefix = self.text.get(start..offset).unwrap_or("");
        lsp_types::Position::new(line as u32, prefix.encode_utf16().count() as u32)
    }

    pub fn range(&self, span: Span) -> lsp_types::Range {
        lsp_types::Range::new(self.position(span.start), self.position(span.end))
    }

    pub fn offset(&self, position: lsp_types::Position) -> usize {
        let Some(&start) = self.starts.get(position.line as usize) else {
            return self.text.len();
        };
        // A column past the line's end means its end (before the newline), as LSP says.
        let end = self
            .starts
            .get(position.line as usize + 1)
            .map_or(self.text.len(), |&e| e - 1);
        let mut units = 0u32;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= position.character {
                return start + i;
            }
            units += c.len_utf16() as u32;
        }
        end
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_used_by_its_bare_name_is_a_use() {
        let program = kd_grammar::parse(
            "loss ce = cross_entropy(s.logits, label)\nloss both(ce = 1) = ce + ce\n\
             stage a { train s on d.train, loss ce }\n",
        )
        .unwrap();
        let all = symbols(&program);
        let ce = all.iter().find(|s| s.name == "ce").unwrap();
        // The stage's `loss ce`; inside `both`, `ce` is its parameter.
        assert_eq!(ce.uses.len(), 1, "{:?}", ce.uses);
    }

    #[test]
    fn a_column_past_the_end_of_a_line_is_its_end() {
        let lines = Lines::new("ab\ncd\n");
        assert_eq!(lines.offset(lsp_types::Position::new(0, 9)), 2);
        assert_eq!(lines.offset(lsp_types::Position::new(1, 1)), 4);
    }
}
