//! `dataset.yaml` / `dataset.json`: the description of an nnDetection task.
//!
//! Fields (nnDetection §1.2): `task` (folder name), `name` (optional), `dim` (3), `target_class`
//! (optional class index for case-level evaluation), `test_labels` (whether `labelsTs` exists),
//! `labels` (`"0"` → class name, keys start at 0 and are consecutive) and `modalities`
//! (`"0"` → `"CT"`, `"MRI"`, …; the string `"CT"` selects CT normalisation). Unknown fields
//! (e.g. `seg2det_things`) are kept in [`DatasetMeta::extra`] and written back on save.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::error::{DataError, Problem};

/// The file names accepted for the dataset description, in order of preference (nnDetection's).
pub const META_FILE_NAMES: [&str; 3] = ["dataset.yaml", "dataset.yml", "dataset.json"];

/// The parsed `dataset.yaml` / `dataset.json` of a task.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Value", into = "Value")]
pub struct DatasetMeta {
    /// The task (folder) name, e.g. `Task016_Luna`.
    pub task: String,
    /// A free-form name.
    pub name: Option<String>,
    /// Spatial dimension; only 3 is supported.
    pub dim: u32,
    /// Class index used for case-level evaluation, if any.
    pub target_class: Option<usize>,
    /// Whether `labelsTs` holds labels for the test cases.
    pub test_labels: bool,
    /// Class names by class index (`labels["0"]` is class 0).
    pub labels: Vec<String>,
    /// Modality names by channel index (`"CT"`, `"MRI"`, …).
    pub modalities: Vec<String>,
    /// Any other fields of the file, kept as they are.
    pub extra: Map<String, Value>,
}

impl DatasetMeta {
    /// A 3D task description with the given class and modality names and no test labels.
    pub fn new(task: &str, labels: &[&str], modalities: &[&str]) -> Self {
        DatasetMeta {
            task: task.to_string(),
            name: None,
            dim: 3,
            target_class: None,
            test_labels: false,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            modalities: modalities.iter().map(|s| s.to_string()).collect(),
            extra: Map::new(),
        }
    }

    /// Number of classes (entries of `labels`).
    pub fn num_classes(&self) -> usize {
        self.labels.len()
    }

    /// Number of input channels (entries of `modalities`).
    pub fn num_modalities(&self) -> usize {
        self.modalities.len()
    }

    /// Whether channel `index` is CT (its modality string is `"CT"`, case-insensitive).
    pub fn is_ct(&self, index: usize) -> bool {
        self.modalities
            .get(index)
            .is_some_and(|m| m.eq_ignore_ascii_case("ct"))
    }

    /// The description as a JSON value in nnDetection's layout (maps keyed `"0"`, `"1"`, …).
    pub fn to_json(&self) -> Value {
        let mut out = self.extra.clone();
        out.insert("task".into(), Value::from(self.task.clone()));
        if let Some(name) = &self.name {
            out.insert("name".into(), Value::from(name.clone()));
        }
        out.insert("dim".into(), Value::from(self.dim));
        out.insert(
            "target_class".into(),
            self.target_class.map(Value::from).unwrap_or(Value::Null),
        );
        out.insert("test_labels".into(), Value::from(self.test_labels));
        let indexed = |v: &[String]| -> Value {
            Value::Object(
                v.iter()
                    .enumerate()
                    .map(|(i, s)| (i.to_string(), Value::from(s.clone())))
                    .collect(),
            )
        };
        out.insert("labels".into(), indexed(&self.labels));
        out.insert("modalities".into(), indexed(&self.modalities));
        Value::Object(out)
    }

    /// Parse a description from a JSON value, collecting every problem (attributed to `path`).
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |m: String| problems.push(Problem::new(path, m));
        let Some(obj) = value.as_object() else {
            bad("the dataset description must be a map of fields".into());
            return Err(problems);
        };
        let task = match obj.get("task") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(other) => {
                bad(format!(
                    "field `task` must be a non-empty string, got {other}"
                ));
                String::new()
            }
            None => {
                bad("missing field `task` (the task folder name, e.g. Task100_Nodules)".into());
                String::new()
            }
        };
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let dim = match obj.get("dim") {
            None | Some(Value::Null) => 3,
            Some(v) => match v.as_u64() {
                Some(3) => 3,
                _ => {
                    bad(format!(
                        "field `dim` must be 3 (only 3D data is supported), got {v}"
                    ));
                    3
                }
            },
        };
        let test_labels = match obj.get("test_labels") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                bad(format!(
                    "field `test_labels` must be true or false, got {other}"
                ));
                false
            }
        };
        let labels = indexed_names(obj.get("labels"), "labels", &mut bad);
        let modalities = indexed_names(obj.get("modalities"), "modalities", &mut bad);
        let target_class = match obj.get("target_class") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(c) if labels.is_empty() || (c as usize) < labels.len() => Some(c as usize),
                Some(c) => {
                    bad(format!(
                        "field `target_class` is {c}, but `labels` only has classes 0..{}",
                        labels.len()
                    ));
                    None
                }
                None => {
                    bad(format!(
                        "field `target_class` must be a class index or null, got {v}"
                    ));
                    None
                }
            },
        };
        let known = [
            "task",
            "name",
            "dim",
            "target_class",
            "test_labels",
            "labels",
            "modalities",
        ];
        let extra = obj
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(DatasetMeta {
            task,
            name,
            dim,
            target_class,
            test_labels,
            labels,
            modalities,
            extra,
        })
    }

    /// Read the description file of the dataset at `root` (`dataset.yaml`, `.yml` or `.json`).
    ///
    /// Returns the parsed description, the file it came from and warnings (e.g. several
    /// description files present), or every problem found.
    pub fn read_from_root(root: &Path) -> Result<(Self, PathBuf, Vec<Problem>), Vec<Problem>> {
        let present: Vec<PathBuf> = META_FILE_NAMES
            .iter()
            .map(|n| root.join(n))
            .filter(|p| p.is_file())
            .collect();
        let Some(path) = present.first().cloned() else {
            return Err(vec![Problem::new(
                root.join("dataset.json"),
                "missing dataset description (dataset.yaml, dataset.yml or dataset.json)",
            )]);
        };
        let mut warnings = Vec::new();
        for other in &present[1..] {
            warnings.push(Problem::new(
                other,
                format!("ignored: {} takes precedence", path.display()),
            ));
        }
        let value = read_meta_value(&path).map_err(|e| vec![Problem::new(&path, e.to_string())])?;
        let meta = Self::from_json(&value, &path)?;
        Ok((meta, path, warnings))
    }

    /// Write the description as `<root>/dataset.json` (atomically).
    pub fn write_json(&self, root: &Path) -> Result<PathBuf, DataError> {
        let path = root.join("dataset.json");
        let text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| DataError::parse(&path, e))?;
        crate::util::atomic_write(&path, text.as_bytes()).map_err(|e| DataError::io(&path, e))?;
        Ok(path)
    }
}

impl TryFrom<Value> for DatasetMeta {
    type Error = String;
    fn try_from(value: Value) -> Result<Self, String> {
        DatasetMeta::from_json(&value, Path::new("dataset description")).map_err(|ps| {
            ps.iter()
                .map(|p| p.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl From<DatasetMeta> for Value {
    fn from(meta: DatasetMeta) -> Value {
        meta.to_json()
    }
}

/// Parse a `"0"`→name map whose keys must be exactly 0..n (also accepts a plain list).
fn indexed_names(value: Option<&Value>, field: &str, bad: &mut impl FnMut(String)) -> Vec<String> {
    let name_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match value {
        None | Some(Value::Null) => {
            bad(format!(
                "missing field `{field}` (a map \"0\" → name, keys starting at 0)"
            ));
            Vec::new()
        }
        Some(Value::Array(items)) => items.iter().map(name_of).collect(),
        Some(Value::Object(map)) => {
            let mut entries: Vec<(usize, String)> = Vec::new();
            for (k, v) in map {
                match k.trim().parse::<usize>() {
                    Ok(i) => entries.push((i, name_of(v))),
                    Err(_) => bad(format!(
                        "field `{field}` has key {k:?}, which is not an integer index"
                    )),
                }
            }
            entries.sort();
            for (expected, (i, _)) in entries.iter().enumerate() {
                if *i != expected {
                    bad(format!(
                        "field `{field}` keys must be 0, 1, 2, … without gaps (nnDetection classes start at 0); found key {i} where {expected} was expected"
                    ));
                    break;
                }
            }
            if entries.is_empty() {
                bad(format!("field `{field}` is empty"));
            }
            entries.into_iter().map(|(_, s)| s).collect()
        }
        Some(other) => {
            bad(format!(
                "field `{field}` must be a map \"0\" → name, got {other}"
            ));
            Vec::new()
        }
    }
}

/// Read a YAML or JSON file into a JSON value (YAML map keys become strings).
fn read_meta_value(path: &Path) -> Result<Value, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let is_json = path.extension().is_some_and(|e| e == "json");
    if is_json {
        serde_json::from_str(&text)
            .map_err(|e| DataError::parse(path, format!("invalid JSON: {e}")))
    } else {
        let yaml: serde_yaml::Value = serde_yaml::from_str(&text)
            .map_err(|e| DataError::parse(path, format!("invalid YAML: {e}")))?;
        Ok(yaml_to_json(yaml))
    }
}

/// Convert YAML to JSON, turning non-string map keys (`0: CT`) into strings.
fn yaml_to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_u64() {
                Value::from(i)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                n.as_f64().map(Value::from).unwrap_or(Value::Null)
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(yaml_to_json).collect()),
        Y::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => match yaml_to_json(other) {
                            Value::String(s) => s,
                            j => j.to_string(),
                        },
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => yaml_to_json(t.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_integer_keys_and_extra_fields_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dataset.yaml"),
            "task: Task100_Test\ndim: 3\ntest_labels: true\ntarget_class: 1\nlabels:\n  0: solid\n  1: part_solid\nmodalities:\n  0: CT\nmin_size: 3.5\n",
        )
        .unwrap();
        let (meta, path, warnings) = DatasetMeta::read_from_root(dir.path()).unwrap();
        assert!(path.ends_with("dataset.yaml"));
        assert!(warnings.is_empty());
        assert_eq!(meta.labels, vec!["solid", "part_solid"]);
        assert_eq!(meta.modalities, vec!["CT"]);
        assert_eq!(meta.target_class, Some(1));
        assert!(meta.test_labels && meta.is_ct(0) && !meta.is_ct(1));
        assert_eq!(meta.extra.get("min_size"), Some(&Value::from(3.5)));
        let back: DatasetMeta = serde_json::from_value(meta.to_json()).unwrap();
        assert_eq!(back, meta);
    }

    #[test]
    fn every_field_problem_is_reported() {
        let v: Value = serde_json::json!({
            "dim": 2, "labels": {"1": "a", "2": "b"}, "modalities": {"0": "CT"}, "test_labels": "yes"
        });
        let problems = DatasetMeta::from_json(&v, Path::new("/d/dataset.json")).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert!(
            text.iter().all(|t| t.starts_with("/d/dataset.json: ")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("missing field `task`")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("`dim` must be 3")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("`test_labels`")), "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("`labels` keys must be 0, 1, 2")),
            "{text:?}"
        );
    }

    #[test]
    fn target_class_outside_labels_is_rejected() {
        let v = serde_json::json!({"task": "T", "labels": {"0": "a"}, "modalities": {"0": "CT"}, "target_class": 3});
        let problems = DatasetMeta::from_json(&v, Path::new("x.json")).unwrap_err();
        assert!(problems[0].message.contains("target_class"));
    }

    #[test]
    fn missing_description_names_the_expected_file() {
        let dir = tempfile::tempdir().unwrap();
        let problems = DatasetMeta::read_from_root(dir.path()).unwrap_err();
        assert!(problems[0].path.ends_with("dataset.json"));
        assert!(problems[0].message.contains("missing dataset description"));
    }
}
