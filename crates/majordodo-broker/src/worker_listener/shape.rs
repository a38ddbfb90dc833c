//! Task shapes: the resources and needs many assignments share, sent once per connection to a
//! worker that understands them ([`majordodo_proto::worker::TaskShape`]) and named by id in
//! each assignment after that, instead of a list of strings and a map with every task.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use majordodo_proto::worker::{Assignment, MAX_TASK_SHAPES, TaskShape};

/// The resources and needs of tasks, shared by the assignments that have the same ones.
#[derive(Debug, PartialEq, Eq)]
pub struct Shape {
    resources: Vec<String>,
    needs: BTreeMap<String, u64>,
    /// Bytes the two fields add to an assignment that carries them itself.
    inline_len: usize,
}

impl Shape {
    /// A shape of `resources` and `needs`.
    pub fn new(resources: Vec<String>, needs: BTreeMap<String, u64>) -> Shape {
        let inline = Assignment {
            resources,
            needs,
            ..Assignment::default()
        };
        let inline_len = prost::Message::encoded_len(&inline);
        Shape {
            resources: inline.resources,
            needs: inline.needs,
            inline_len,
        }
    }

    /// Bytes the shape adds to an assignment that carries it itself.
    pub fn inline_len(&self) -> usize {
        self.inline_len
    }
}

/// An assignment on its way to a worker: the assignment without its resources and needs, and
/// the shape that holds them (none when the task has neither).
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The assignment.
    pub assignment: Assignment,
    /// Its resources and needs.
    pub shape: Option<Arc<Shape>>,
}

impl From<Assignment> for Outgoing {
    fn from(assignment: Assignment) -> Outgoing {
        Outgoing {
            assignment,
            shape: None,
        }
    }
}

impl Outgoing {
    /// The assignment with its resources and needs in its own fields, as a worker that does not
    /// know shapes reads it.
    pub fn into_inline(self) -> Assignment {
        let mut assignment = self.assignment;
        if let Some(shape) = self.shape {
            fill(&mut assignment, &shape);
        }
        assignment
    }

    /// Bytes of the assignment in a frame when it carries its shape itself (the most it takes).
    pub(super) fn inline_frame_len(&self) -> usize {
        let Some(shape) = &self.shape else {
            return super::connection::single_assignment_frame_len(&self.assignment);
        };
        // The frame's one assignment field: key, length, the assignment and the two fields.
        let len = prost::Message::encoded_len(&self.assignment) + shape.inline_len;
        majordodo_proto::worker::FRAME_OVERHEAD
            + prost::encoding::key_len(1)
            + prost::encoding::encoded_len_varint(len as u64)
            + len
    }
}

fn fill(assignment: &mut Assignment, shape: &Shape) {
    assignment.resources.clone_from(&shape.resources);
    assignment.needs.clone_from(&shape.needs);
    assignment.shape = 0;
}

/// The shapes one connection has defined, by the address of the shared shape (each one kept
/// alive here, so an address is never reused while it names an id).
#[derive(Debug, Default)]
pub(super) struct Defined {
    /// Whether the worker announced it understands shapes.
    enabled: bool,
    ids: HashMap<usize, (u32, Arc<Shape>)>,
}

impl Defined {
    pub(super) fn new(enabled: bool) -> Defined {
        Defined {
            enabled,
            ids: HashMap::new(),
        }
    }

    /// The assignments to send, each naming its shape by id (or carrying it, to a worker that
    /// does not know shapes or once this connection defined [`MAX_TASK_SHAPES`]), and the
    /// shapes to define before them.
    pub(super) fn resolve(&mut self, outgoing: Vec<Outgoing>) -> (Vec<TaskShape>, Vec<Assignment>) {
        let mut new = Vec::new();
        let assignments = outgoing
            .into_iter()
            .map(|o| {
                let Some(shape) = o.shape else {
                    return o.assignment;
                };
                let mut assignment = o.assignment;
                if !self.enabled {
                    fill(&mut assignment, &shape);
                    return assignment;
                }
                let key = Arc::as_ptr(&shape) as usize;
                if let Some((id, _)) = self.ids.get(&key) {
                    assignment.shape = *id;
                } else if self.ids.len() < MAX_TASK_SHAPES {
                    let id = u32::try_from(self.ids.len() + 1).expect("bounded by MAX_TASK_SHAPES");
                    new.push(TaskShape {
                        id,
                        resources: shape.resources.clone(),
                        needs: shape.needs.clone(),
                    });
                    self.ids.insert(key, (id, shape));
                    assignment.shape = id;
                } else {
                    fill(&mut assignment, &shape);
                }
                assignment
            })
            .collect();
        (new, assignments)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outgoing(id: u64, shape: Option<&Arc<Shape>>) -> Outgoing {
        Outgoing {
            assignment: Assignment {
                task_id: id,
                attempt: 1,
                ..Assignment::default()
            },
            shape: shape.cloned(),
        }
    }

    fn shape(resource: &str, cpu: u64) -> Arc<Shape> {
        Arc::new(Shape::new(
            vec![resource.to_owned()],
            BTreeMap::from([("cpu".to_owned(), cpu)]),
        ))
    }

    #[test]
    fn each_shape_is_defined_once_then_named_by_id() {
        // Goal: the first assignment of a shape defines it, later ones only name it; tasks
        // without a shape carry nothing; ids start at 1 and follow the order of first use.
        let a = shape("db", 100);
        let b = shape("hbase", 200);
        let mut defined = Defined::new(true);
        let (new, sent) = defined.resolve(vec![
            outgoing(1, Some(&a)),
            outgoing(2, None),
            outgoing(3, Some(&b)),
            outgoing(4, Some(&a)),
        ]);
        assert_eq!(
            new.iter()
                .map(|s| (s.id, s.resources.clone()))
                .collect::<Vec<_>>(),
            vec![(1, vec!["db".to_owned()]), (2, vec!["hbase".to_owned()])]
        );
        assert_eq!(new[1].needs, BTreeMap::from([("cpu".to_owned(), 200)]));
        assert_eq!(
            sent.iter().map(|a| a.shape).collect::<Vec<_>>(),
            [1, 0, 2, 1]
        );
        assert!(
            sent.iter()
                .all(|a| a.resources.is_empty() && a.needs.is_empty())
        );
        let (new, sent) = defined.resolve(vec![outgoing(5, Some(&b))]);
        assert!(new.is_empty(), "defined on an earlier frame");
        assert_eq!(sent[0].shape, 2);
    }

    #[test]
    fn a_worker_without_shapes_and_shapes_past_the_bound_are_sent_inline() {
        // Goal: a worker that did not announce shapes gets every assignment whole; past
        // MAX_TASK_SHAPES definitions a connection sends new shapes inline, and what it
        // defined stays named by id.
        let a = shape("db", 100);
        let (new, sent) = Defined::new(false).resolve(vec![outgoing(1, Some(&a))]);
        assert!(new.is_empty());
        assert_eq!(sent[0], outgoing(1, Some(&a)).into_inline());
        assert_eq!(sent[0].resources, ["db"]);
        assert_eq!(sent[0].shape, 0);

        let mut defined = Defined::new(true);
        let shapes: Vec<Arc<Shape>> = (0..MAX_TASK_SHAPES as u64 + 1)
            .map(|i| shape("db", i))
            .collect();
        let (new, sent) = defined.resolve(shapes.iter().map(|s| outgoing(1, Some(s))).collect());
        assert_eq!(new.len(), MAX_TASK_SHAPES);
        let last = sent.last().unwrap();
        assert_eq!(last.shape, 0);
        assert_eq!(last.needs["cpu"], MAX_TASK_SHAPES as u64);
        let (_, again) = defined.resolve(vec![outgoing(2, Some(&shapes[0]))]);
        assert_eq!(again[0].shape, 1);
    }

    #[test]
    fn the_inline_length_is_what_the_fields_add() {
        // Goal: the size check of an assignment with a shape counts the shape as if inline.
        let a = shape("db", 100);
        let o = outgoing(1, Some(&a));
        let inline = o.clone().into_inline();
        assert_eq!(
            o.inline_frame_len(),
            super::super::connection::single_assignment_frame_len(&inline)
        );
    }
}
