//! forEach items are the nodes of `data` (or `procedureData`) themselves, as in MPS: what a
//! step writes into its forEach name goes into the current item, and a `move` out of the
//! forEach name detaches the item from where it was. The executor works on a copy of each
//! item and knows where the item lives (child indices from its scope's root), so the copy is
//! read afresh when an iteration starts and put back when it ends.

use super::state::{lock, Bindings, StepCtx};
use super::Failure;
use crate::compile::ExecNode;
use crate::data::path::{element_at, element_at_mut};
use crate::data::{Element, Node, Scalar};
use crate::model::Scope;

/// Where a forEach item lives: child indices (text nodes count) from the root of a shared
/// scope (`data` or `procedureData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) scope: Scope,
    pub(super) indices: Vec<usize>,
}

impl Origin {
    /// The location `rel` below this one.
    pub(super) fn join(self, rel: &[usize]) -> Origin {
        let mut indices = self.indices;
        indices.extend_from_slice(rel);
        Origin {
            scope: self.scope,
            indices,
        }
    }
}

/// One iteration of a step: its path suffix (`[2][1]`), its forEach bindings, and where
/// each bound item lives (`None`: not an element of a shared scope, such as an attribute's
/// value or the empty item of `ifNull="ignore"`).
#[derive(Debug, Default)]
pub(super) struct Iteration {
    pub(super) suffix: String,
    pub(super) bindings: Bindings,
    pub(super) origins: Vec<Option<Origin>>,
}

/// The iterations of an execute step, handed out one at a time.
pub(super) enum Iterations {
    /// Built up front (nested forEach, filters, attribute or text items, or a step whose
    /// transforms write into `data` or `procedureData`); each is dropped once it ran.
    Built(std::vec::IntoIter<Iteration>),
    /// One forEach over elements of `data` or `procedureData` at one depth, by a step that
    /// writes into neither: only where each item is (`depth` child indices each, in
    /// `flat`), its element copied when its iteration starts. Nothing changes the scope
    /// while the step runs, so the copy is what a copy made up front would be; a
    /// forEach over 100,000 users held 100,000 copies of them, their bindings and their
    /// locations (~610 bytes each) before the first call.
    Located {
        name: String,
        scope: Scope,
        depth: usize,
        flat: Vec<usize>,
        next: usize,
    },
}

impl Iterations {
    /// The next iteration, its item read where it is now.
    pub(super) fn next(&mut self, cx: StepCtx<'_>) -> Option<Result<Iteration, Failure>> {
        match self {
            Iterations::Built(list) => list.next().map(Ok),
            Iterations::Located {
                name,
                scope,
                depth,
                flat,
                next,
            } => {
                let k = *next;
                let indices = flat.get(k * *depth..(k + 1) * *depth)?.to_vec();
                *next += 1;
                let origin = Origin {
                    scope: scope.clone(),
                    indices,
                };
                let item =
                    cx.with_origin(&origin, |root| element_at(root, &origin.indices).cloned());
                Some(match item {
                    Some(e) => Ok(Iteration {
                        suffix: format!("[{}]", k + 1),
                        bindings: vec![(name.clone(), e)],
                        origins: vec![Some(origin)],
                    }),
                    None => Err(moved(cx.step, name)),
                })
            }
        }
    }
}

impl<'a> StepCtx<'a> {
    /// At the start of an iteration of a step that writes into its forEach items: each
    /// such item as it is now (an earlier iteration may have changed it).
    pub(super) fn refresh_items(self, node: &ExecNode, it: &mut Iteration) -> Result<(), Failure> {
        for (i, (name, item)) in it.bindings.iter_mut().enumerate() {
            if !node.write_back.contains(name) {
                continue;
            }
            let Some(origin) = &it.origins[i] else {
                continue;
            };
            let now = self.with_origin(origin, |root| element_at(root, &origin.indices).cloned());
            match now {
                Some(e) if e.name == item.name => *item = e,
                _ => return Err(moved(self.step, name)),
            }
        }
        Ok(())
    }

    /// At the end of an iteration: the items the step wrote into go back where they came
    /// from, and an item moved out of its forEach name is detached from there (a placeholder
    /// takes its place until the step ends). Returns the locations of those placeholders.
    pub(super) fn write_back_items(
        self,
        node: &ExecNode,
        it: &mut Iteration,
    ) -> Result<Vec<Origin>, Failure> {
        let mut removed = Vec::new();
        for (i, (name, item)) in it.bindings.iter_mut().enumerate() {
            if !node.write_back.contains(name) {
                continue;
            }
            let Some(origin) = it.origins[i].clone() else {
                continue;
            };
            let detach = node.detach.contains(name);
            let item = std::mem::replace(item, Element::new(item.name.clone()));
            let ok = self.with_origin(&origin, |root| match origin.indices.split_last() {
                // The forEach iterates over the scope's root itself: written in place, never
                // detached (a scope cannot be removed).
                None => {
                    if !detach {
                        let name = root.name.clone();
                        *root = item;
                        root.name = name;
                    }
                    true
                }
                Some((&last, parent)) => match element_at_mut(root, parent) {
                    Some(p) => match p.children.get_mut(last) {
                        Some(slot @ Node::Element(_)) => match slot {
                            Node::Element(e) if e.name == item.name => {
                                if detach {
                                    // A placeholder keeps the later siblings where the later
                                    // iterations expect them; `remove_detached` drops it.
                                    *slot = placeholder();
                                } else {
                                    *e = item;
                                }
                                true
                            }
                            _ => false,
                        },
                        _ => false,
                    },
                    None => false,
                },
            });
            if !ok {
                return Err(moved(self.step, name));
            }
            if detach && !origin.indices.is_empty() {
                removed.push(origin);
            }
        }
        Ok(removed)
    }

    /// Drops the placeholders of detached items (see [`remove_placeholders`]).
    pub(super) fn remove_detached(self, detached: Vec<Origin>) {
        let (data, procedure_data): (Vec<Origin>, Vec<Origin>) = detached
            .into_iter()
            .partition(|o| o.scope != Scope::ProcedureData);
        for list in [data, procedure_data] {
            if let Some(first) = list.first() {
                let scope = first.clone();
                let at = list.into_iter().map(|o| o.indices).collect();
                self.with_origin(&scope, |root| remove_placeholders(root, at));
            }
        }
    }

    fn with_origin<R>(self, origin: &Origin, f: impl FnOnce(&mut Element) -> R) -> R {
        match origin.scope {
            Scope::ProcedureData => f(&mut lock(&self.inv.procedure_data)),
            _ => f(&mut lock(&self.inv.data)),
        }
    }
}

/// Drops the placeholders at `at` (child indices from `root`), in one pass over each list
/// that lost items, so detaching every item of a long list stays linear.
fn remove_placeholders(root: &mut Element, mut at: Vec<Vec<usize>>) {
    // Last in document order first: dropping a node moves only its later siblings, and
    // those are done by then.
    at.sort_unstable_by(|a, b| b.cmp(a));
    let mut start = 0;
    while start < at.len() {
        let Some((_, parent)) = at[start].split_last() else {
            start += 1;
            continue;
        };
        let parent = parent.to_vec();
        let end = start
            + at[start..]
                .iter()
                .take_while(|i| i.len() == parent.len() + 1 && i.starts_with(&parent))
                .count();
        let mut gone = at[start..end]
            .iter()
            .rev()
            .map(|i| i[parent.len()])
            .peekable();
        if let Some(p) = element_at_mut(root, &parent) {
            let mut index = 0;
            p.children.retain(|child| {
                let here = index;
                index += 1;
                if gone.peek() == Some(&here) {
                    gone.next();
                    return !is_placeholder(child);
                }
                true
            });
        }
        start = end;
    }
}

/// What stands where a detached item was until its step ends: an empty text node, which
/// no element path selects and which renders as nothing.
fn placeholder() -> Node {
    Node::Text(Scalar::Str(Default::default()))
}

fn is_placeholder(node: &Node) -> bool {
    matches!(node, Node::Text(Scalar::Str(s)) if s.is_empty())
}

fn moved(step: &str, name: &str) -> Failure {
    Failure::data(
        step,
        format!(
            "forEach `{name}`: the item this iteration writes into is no longer where it was; \
             a transform of the step moved or removed nodes of the list the forEach iterates over \
             (write into the item through the forEach name, or move it out with mode=\"move\" from `{name}`)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::json::to_json;

    fn el(name: &str, children: Vec<Node>) -> Node {
        let mut e = Element::new(name);
        e.children = children;
        Node::Element(e)
    }

    #[test]
    fn placeholders_go_in_one_pass_and_later_siblings_are_kept() {
        // data/list: a, _, c, d(_, y), _, f   (`_` = placeholder of a detached item)
        let mut root = Element::new("data");
        root.children = vec![el(
            "list",
            vec![
                el("a", vec![]),
                placeholder(),
                el("c", vec![]),
                el("d", vec![placeholder(), el("y", vec![])]),
                placeholder(),
                el("f", vec![]),
            ],
        )];
        let at = vec![vec![0, 4], vec![0, 3, 0], vec![0, 1]];
        remove_placeholders(&mut root, at);
        assert_eq!(
            to_json(&root),
            serde_json::json!({"list": {"a": null, "c": null, "d": {"y": null}, "f": null}})
        );
    }

    #[test]
    fn a_location_that_is_not_a_placeholder_is_left_alone() {
        let mut root = Element::new("data");
        root.children = vec![el("a", vec![]), el("b", vec![])];
        remove_placeholders(&mut root, vec![vec![1]]);
        assert_eq!(root.children.len(), 2);
    }
}
