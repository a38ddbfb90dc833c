//! Reading a `POST` body without expanding it: the top-level object is read key by key straight
//! from the bytes, the `tasks` array of `submitTasks` element by element (each element becomes a
//! [`TaskSubmission`] before the next one is read), and every other value is read into a small
//! [`Value`] whose size and depth are capped. Duplicate keys are refused at every level.
//!
//! So a body costs about its own size in memory whatever its shape: a 16 MiB body of tiny
//! arrays is refused at its first out-of-place value instead of becoming hundreds of MiB of
//! JSON values.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::request::{TaskSubmission, clip};
use super::{BODY_FIELD, FieldError, MAX_BATCH_TASKS};

/// Deepest nesting accepted in a body: the body object is level 1, `tasks` 2, a task 3, its
/// `needs` 4. Deeper values are refused before they are read.
pub const MAX_JSON_DEPTH: usize = 6;

/// Most JSON values (every scalar, array and object counts one) read into memory outside the
/// tasks of `submitTasks`, and within each task: far above any real request, small enough that
/// a hostile body cannot expand.
pub const MAX_JSON_VALUES: usize = 4_096;

/// A body read at the top level: its fields except `tasks`, and the tasks parsed so far.
pub(super) struct Body {
    /// Every field except `tasks` (which is [`Value::Null`] here when present).
    pub(super) obj: Map<String, Value>,
    /// The tasks of `tasks` when it held an array (read as `submitTasks` tasks).
    pub(super) tasks: Option<Vec<TaskSubmission>>,
}

/// Where the first problem is recorded (serde's errors carry only text).
#[derive(Default)]
struct Problem(RefCell<Option<FieldError>>);

impl Problem {
    fn set<E: de::Error>(&self, e: FieldError) -> E {
        let mut slot = self.0.borrow_mut();
        if slot.is_none() {
            *slot = Some(e);
        }
        E::custom("refused")
    }
}

/// Reads `text` as a body object.
///
/// # Errors
/// The first problem: [`BODY_FIELD`] for bad JSON or a body that is not an object, else the
/// field at fault (a duplicate key, a value too deep or too big, a task).
pub(super) fn read_body(text: &str) -> Result<Body, FieldError> {
    let problem = Problem::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let result = TopSeed { problem: &problem }
        .deserialize(&mut de)
        .and_then(|body| de.end().map(|()| body));
    match result {
        Ok(body) => Ok(body),
        Err(e) => Err(problem
            .0
            .into_inner()
            .unwrap_or_else(|| FieldError::new(BODY_FIELD, format!("is not valid JSON: {e}")))),
    }
}

struct TopSeed<'p> {
    problem: &'p Problem,
}

impl<'de> DeserializeSeed<'de> for TopSeed<'_> {
    type Value = Body;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Body, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_> {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
        let mut obj = Map::new();
        let mut tasks = None;
        let mut budget = MAX_JSON_VALUES;
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(self.problem.set(duplicate("", &key)));
            }
            let is_tasks_array = key == "tasks"
                && obj
                    .get("action")
                    .is_none_or(|a| a.as_str() == Some("submitTasks"));
            if is_tasks_array {
                obj.insert(key, Value::Null);
                tasks = map.next_value_seed(TasksSeed {
                    problem: self.problem,
                })?;
                continue;
            }
            let value = map.next_value_seed(ValueSeed {
                problem: self.problem,
                path: &key,
                depth: 2,
                budget: &mut budget,
            })?;
            obj.insert(key, value);
        }
        Ok(Body { obj, tasks })
    }

    // Anything else is not an object: say so, whatever it holds, without reading it.
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Body, A::Error> {
        Err(self.not_object())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Body, E> {
        Err(self.not_object())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Body, E> {
        Err(self.not_object())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Body, E> {
        Err(self.not_object())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Body, E> {
        Err(self.not_object())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Body, E> {
        Err(self.not_object())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Body, E> {
        Err(self.not_object())
    }
}

impl TopSeed<'_> {
    fn not_object<E: de::Error>(&self) -> E {
        self.problem
            .set(FieldError::new(BODY_FIELD, "must be a JSON object"))
    }
}

fn duplicate(path: &str, key: &str) -> FieldError {
    FieldError::new(
        format!("{path}{}", clip(key)),
        "is given twice; give each field once",
    )
}

/// `tasks`: `None` when it is not an array (the caller then says what it must be).
struct TasksSeed<'p> {
    problem: &'p Problem,
}

impl<'de> DeserializeSeed<'de> for TasksSeed<'_> {
    type Value = Option<Vec<TaskSubmission>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TasksSeed<'_> {
    type Value = Option<Vec<TaskSubmission>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of task objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut tasks = Vec::new();
        loop {
            let i = tasks.len();
            let path = format!("tasks[{i}]");
            let mut budget = MAX_JSON_VALUES;
            let Some(value) = seq.next_element_seed(ValueSeed {
                problem: self.problem,
                path: &path,
                depth: 3,
                budget: &mut budget,
            })?
            else {
                return Ok(Some(tasks));
            };
            if i >= MAX_BATCH_TASKS {
                return Err(self.problem.set(FieldError::new(
                    "tasks",
                    format!("holds more than {MAX_BATCH_TASKS} tasks; at most {MAX_BATCH_TASKS} are accepted in one request"),
                )));
            }
            let Value::Object(task) = value else {
                return Err(self.problem.set(FieldError::new(path, "must be an object")));
            };
            let prefix = format!("{path}.");
            let task = TaskSubmission::parse(&task, &prefix, &|k| super::request::is_task_field(k))
                .map_err(|e| self.problem.set(e))?;
            tasks.push(task);
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(self.problem.set(FieldError::new("tasks", "is required")))
    }
}

/// One value, at `depth`, counted against `budget`.
struct ValueSeed<'a, 'p> {
    problem: &'p Problem,
    /// The field's name, for errors (`needs`, `tasks[3]`).
    path: &'a str,
    depth: usize,
    budget: &'a mut usize,
}

impl ValueSeed<'_, '_> {
    fn count<E: de::Error>(&mut self) -> Result<(), E> {
        if *self.budget == 0 {
            return Err(self.problem.set(FieldError::new(
                clip(self.path),
                format!("holds too many values; at most {MAX_JSON_VALUES} are accepted"),
            )));
        }
        *self.budget -= 1;
        Ok(())
    }

    fn nest<E: de::Error>(&mut self) -> Result<(), E> {
        self.count()?;
        if self.depth > MAX_JSON_DEPTH {
            return Err(self.problem.set(FieldError::new(
                clip(self.path),
                format!("nests too deep; at most {MAX_JSON_DEPTH} levels are accepted"),
            )));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<Value, E> {
        self.count()?;
        Ok(v.into())
    }
    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<Value, E> {
        self.count()?;
        Ok(v.into())
    }
    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<Value, E> {
        self.count()?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<Value, E> {
        self.count()?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(mut self, v: String) -> Result<Value, E> {
        self.count()?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(mut self) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        self.nest()?;
        let mut items = Vec::new();
        loop {
            let path = format!("{}[{}]", self.path, items.len());
            let Some(v) = seq.next_element_seed(ValueSeed {
                problem: self.problem,
                path: &path,
                depth: self.depth + 1,
                budget: self.budget,
            })?
            else {
                return Ok(Value::Array(items));
            };
            items.push(v);
        }
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        self.nest()?;
        let mut obj = Map::new();
        let prefix = format!("{}.", self.path);
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(self.problem.set(duplicate(&prefix, &key)));
            }
            let path = format!("{prefix}{}", clip(&key));
            let v = map.next_value_seed(ValueSeed {
                problem: self.problem,
                path: &path,
                depth: self.depth + 1,
                budget: self.budget,
            })?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}
