//! File formats of the metrics module: `detlab eval`'s input JSON, per-case prediction files
//! and GT read from an nnDetection raw-layout dataset.
//!
//! The formats are described in the [module documentation](super).

use super::{ImageGt, ImagePred, MetricsError, validate_case};
use crate::volume::boxes::Box3;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// One case of `detlab eval`'s input: its id, GT and predictions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalCase {
    /// Case id (used in error messages).
    pub id: String,
    /// Ground truth.
    pub gt: ImageGt,
    /// Predictions.
    pub pred: ImagePred,
}

/// `detlab eval`'s input: optional class names and the cases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalInput {
    /// Class names (index = class); `None` when the file has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// The cases, in evaluation order.
    pub cases: Vec<EvalCase>,
}

impl EvalInput {
    /// Number of classes: the class names' count, or the largest index seen + 1.
    pub fn num_classes(&self) -> usize {
        match &self.classes {
            Some(names) => names.len(),
            None => self
                .cases
                .iter()
                .flat_map(|c| c.gt.classes.iter().chain(&c.pred.classes))
                .map(|c| c + 1)
                .max()
                .unwrap_or(0),
        }
    }

    /// The GT of every case, in order.
    pub fn gt(&self) -> Vec<ImageGt> {
        self.cases.iter().map(|c| c.gt.clone()).collect()
    }

    /// The predictions of every case, in order.
    pub fn pred(&self) -> Vec<ImagePred> {
        self.cases.iter().map(|c| c.pred.clone()).collect()
    }

    /// Parse and validate the JSON text; errors name the case and field.
    pub fn from_json_str(text: &str) -> Result<EvalInput, MetricsError> {
        // Well-formed input takes the typed one-pass read; whatever it refuses is read again
        // by the general reader below, whose errors name the case and field.
        if let Some(input) = Self::from_json_typed(text) {
            return Ok(input);
        }
        Self::from_json_general(text)
    }

    /// The general reader: a JSON tree first, so that every error names its case and field.
    /// [`EvalInput::from_json_str`] uses it only for input the typed read refuses; public so
    /// that `detlab bench eval` can time both readers on the same file.
    pub fn from_json_general(text: &str) -> Result<EvalInput, MetricsError> {
        let root: Value =
            parse_json_exact(text).map_err(|e| MetricsError::input("(file)", "(json)", e))?;
        let obj = root.as_object().ok_or_else(|| {
            MetricsError::input(
                "(file)",
                "(root)",
                "expected a JSON object with a 'cases' list",
            )
        })?;
        for key in obj.keys() {
            if key != "classes" && key != "cases" {
                return Err(MetricsError::input(
                    "(file)",
                    key,
                    "unknown field (expected 'classes' and 'cases')",
                ));
            }
        }
        let classes = match obj.get("classes") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            MetricsError::input(
                                "(file)",
                                format!("classes[{i}]"),
                                "expected a string",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(MetricsError::input(
                    "(file)",
                    "classes",
                    "expected a list of class names",
                ));
            }
        };
        let cases_v = obj
            .get("cases")
            .and_then(Value::as_array)
            .ok_or_else(|| MetricsError::input("(file)", "cases", "missing or not a list"))?;
        let mut cases = Vec::with_capacity(cases_v.len());
        let mut seen = HashSet::new();
        for (i, cv) in cases_v.iter().enumerate() {
            let co = cv.as_object().ok_or_else(|| {
                MetricsError::input(format!("#{i}"), "(case)", "expected an object")
            })?;
            let id = match co.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                None => format!("#{i}"),
                Some(_) => {
                    return Err(MetricsError::input(
                        format!("#{i}"),
                        "id",
                        "expected a string",
                    ));
                }
            };
            if !seen.insert(id.clone()) {
                return Err(MetricsError::input(&id, "id", "duplicate case id"));
            }
            for key in co.keys() {
                if !["id", "gt", "pred"].contains(&key.as_str()) {
                    return Err(MetricsError::input(
                        &id,
                        key,
                        "unknown field (expected 'id', 'gt', 'pred')",
                    ));
                }
            }
            let gt = match co.get("gt") {
                None | Some(Value::Null) => ImageGt::default(),
                Some(v) => {
                    let o = v.as_object().ok_or_else(|| {
                        MetricsError::input(
                            &id,
                            "gt",
                            "expected an object with 'boxes' and 'classes'",
                        )
                    })?;
                    check_keys(&id, "gt", o, &["boxes", "classes"])?;
                    ImageGt {
                        boxes: boxes(&id, "gt.boxes", o.get("boxes"))?,
                        classes: class_list(&id, "gt.classes", o.get("classes"))?,
                    }
                }
            };
            let pred = match co.get("pred") {
                None | Some(Value::Null) => ImagePred::default(),
                Some(v) => {
                    let o = v.as_object().ok_or_else(|| {
                        MetricsError::input(
                            &id,
                            "pred",
                            "expected an object with 'boxes', 'scores' and 'classes'",
                        )
                    })?;
                    check_keys(&id, "pred", o, &["boxes", "scores", "classes"])?;
                    ImagePred {
                        boxes: boxes(&id, "pred.boxes", o.get("boxes"))?,
                        scores: numbers(&id, "pred.scores", o.get("scores"))?,
                        classes: class_list(&id, "pred.classes", o.get("classes"))?,
                    }
                }
            };
            cases.push(EvalCase { id, gt, pred });
        }
        let input = EvalInput { classes, cases };
        let n = input.classes.as_ref().map(Vec::len);
        for c in &input.cases {
            validate_case(&c.id, &c.gt, &c.pred, n)?;
        }
        Ok(input)
    }

    /// The typed one-pass read of well-formed, valid input: serde_json straight into the
    /// cases, with correctly rounded floats (its `float_roundtrip` feature, the same values
    /// as [`parse_json_exact`]). `None` for anything else (Python's `NaN`, a class written
    /// `1.0`, a `null` list, a duplicate id, an invalid case, …): the general reader decides
    /// those and words the error. About 4× faster than building a JSON tree first.
    fn from_json_typed(text: &str) -> Option<EvalInput> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            classes: Option<Vec<String>>,
            cases: Vec<Case>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Case {
            #[serde(default)]
            id: Option<Value>,
            #[serde(default)]
            gt: Option<ImageGt>,
            #[serde(default)]
            pred: Option<ImagePred>,
        }
        let raw: Input = serde_json::from_str(text).ok()?;
        let n = raw.classes.as_ref().map(Vec::len);
        let mut seen = HashSet::with_capacity(raw.cases.len());
        let mut cases = Vec::with_capacity(raw.cases.len());
        for (i, c) in raw.cases.into_iter().enumerate() {
            let id = match c.id {
                Some(Value::String(s)) => s,
                Some(Value::Number(x)) => x.to_string(),
                None => format!("#{i}"),
                Some(_) => return None,
            };
            let case = EvalCase {
                gt: c.gt.unwrap_or_default(),
                pred: c.pred.unwrap_or_default(),
                id,
            };
            if validate_case(&case.id, &case.gt, &case.pred, n).is_err()
                || !seen.insert(case.id.clone())
            {
                return None;
            }
            cases.push(case);
        }
        Some(EvalInput {
            classes: raw.classes,
            cases,
        })
    }

    /// Read and validate an input file.
    pub fn read(path: &Path) -> Result<EvalInput, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::file(path, e))?;
        EvalInput::from_json_str(&text).map_err(|e| match e {
            MetricsError::Input {
                case,
                field,
                message,
            } if case == "(file)" => {
                MetricsError::file(path, format!("field '{field}': {message}"))
            }
            // Name the file as well as the case and field.
            other => MetricsError::file(path, other),
        })
    }
}

fn check_keys(
    case: &str,
    prefix: &str,
    o: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), MetricsError> {
    for key in o.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(MetricsError::input(
                case,
                format!("{prefix}.{key}"),
                format!("unknown field (expected {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

fn list<'a>(case: &str, field: &str, v: Option<&'a Value>) -> Result<&'a [Value], MetricsError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(MetricsError::input(case, field, "expected a list")),
    }
}

/// Parse JSON text with correctly rounded numbers (serde_json's default float parser can be
/// one ulp off, which would break bit-exact agreement with nnDetection). Python's bare `NaN`,
/// `Infinity` and `-Infinity` (written by `json.dump`) are accepted and become the strings
/// `"NaN"`, `"Infinity"`, `"-Infinity"`, so that validation can name the field holding them.
pub fn parse_json_exact(text: &str) -> Result<Value, String> {
    let mut p = JsonParser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
    };
    p.skip_ws();
    let v = p.value(0)?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(p.error("trailing characters"));
    }
    Ok(v)
}

struct JsonParser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl JsonParser<'_> {
    fn error(&self, what: &str) -> String {
        let before = &self.text[..self.pos.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{what} at line {line} column {column}")
    }

    fn skip_ws(&mut self) {
        while self.pos < self.bytes.len()
            && matches!(self.bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r')
        {
            self.pos += 1;
        }
    }

    fn eat(&mut self, literal: &str) -> bool {
        if self.text[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > 256 {
            return Err(self.error("nesting too deep"));
        }
        match self.bytes.get(self.pos) {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => {
                self.pos += 1;
                let mut map = serde_json::Map::new();
                self.skip_ws();
                if self.eat("}") {
                    return Ok(Value::Object(map));
                }
                loop {
                    self.skip_ws();
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return Err(self.error("expected a string key"));
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if !self.eat(":") {
                        return Err(self.error("expected ':'"));
                    }
                    self.skip_ws();
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                    self.skip_ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("}") {
                        return Ok(Value::Object(map));
                    }
                    return Err(self.error("expected ',' or '}'"));
                }
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.eat("]") {
                    return Ok(Value::Array(items));
                }
                loop {
                    self.skip_ws();
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    if self.eat(",") {
                        continue;
                    }
                    if self.eat("]") {
                        return Ok(Value::Array(items));
                    }
                    return Err(self.error("expected ',' or ']'"));
                }
            }
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(_) => {
                for (lit, v) in [
                    ("true", Value::Bool(true)),
                    ("false", Value::Bool(false)),
                    ("null", Value::Null),
                ] {
                    if self.eat(lit) {
                        return Ok(v);
                    }
                }
                for lit in ["NaN", "Infinity", "-Infinity"] {
                    if self.eat(lit) {
                        return Ok(Value::String(lit.to_string()));
                    }
                }
                self.number()
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut escaped = false;
        while let Some(&b) = self.bytes.get(self.pos) {
            self.pos += 1;
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                // The string's escapes are decoded by serde_json (no numbers involved).
                return serde_json::from_str::<String>(&self.text[start..self.pos]).map_err(|e| {
                    self.pos = start;
                    self.error(&format!("invalid string ({e})"))
                });
            }
        }
        self.pos = start;
        Err(self.error("unterminated string"))
    }

    fn number(&mut self) -> Result<Value, String> {
        let start = self.pos;
        while self.pos < self.bytes.len()
            && matches!(
                self.bytes[self.pos],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.pos += 1;
        }
        let token = &self.text[start..self.pos];
        if token.is_empty() {
            return Err(self.error("expected a value"));
        }
        let is_float = token.contains(['.', 'e', 'E']);
        if !is_float {
            if let Ok(u) = token.parse::<u64>() {
                return Ok(Value::from(u));
            }
            if let Ok(i) = token.parse::<i64>() {
                return Ok(Value::from(i));
            }
        }
        // Rust's float parsing is correctly rounded.
        match token
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            Some(n) if token.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
                Ok(Value::Number(n))
            }
            _ => {
                self.pos = start;
                Err(self.error(&format!("invalid number '{token}'")))
            }
        }
    }
}

fn number(x: &Value) -> Option<f64> {
    match x {
        Value::String(s) if s == "NaN" => Some(f64::NAN),
        Value::String(s) if s == "Infinity" => Some(f64::INFINITY),
        Value::String(s) if s == "-Infinity" => Some(f64::NEG_INFINITY),
        _ => x.as_f64(),
    }
}

fn numbers(case: &str, field: &str, v: Option<&Value>) -> Result<Vec<f64>, MetricsError> {
    list(case, field, v)?
        .iter()
        .enumerate()
        .map(|(i, x)| {
            number(x).ok_or_else(|| {
                MetricsError::input(
                    case,
                    format!("{field}[{i}]"),
                    format!("expected a number, got {x}"),
                )
            })
        })
        .collect()
}

fn class_list(case: &str, field: &str, v: Option<&Value>) -> Result<Vec<usize>, MetricsError> {
    list(case, field, v)?
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let c = x.as_u64().or_else(|| {
                x.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            });
            c.map(|c| c as usize).ok_or_else(|| {
                MetricsError::input(
                    case,
                    format!("{field}[{i}]"),
                    format!("expected a class index >= 0, got {x}"),
                )
            })
        })
        .collect()
}

fn boxes(case: &str, field: &str, v: Option<&Value>) -> Result<Vec<Box3>, MetricsError> {
    list(case, field, v)?
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let f = format!("{field}[{i}]");
            let nums = numbers(case, &f, Some(b))?;
            crate::volume::boxes::validate(&nums).map_err(|m| MetricsError::input(case, &f, m))
        })
        .collect()
}

/// Detections of one case as written by inference: `<case>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictionFile {
    /// The case id (the file name without `.json`).
    pub case: String,
    /// Boxes `[d0,h0,w0,d1,h1,w1]` in voxels of the original image.
    pub boxes: Vec<Box3>,
    /// The same boxes in world mm (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boxes_mm: Option<Vec<Box3>>,
    /// Confidence of each box.
    pub scores: Vec<f64>,
    /// Class index of each box.
    pub classes: Vec<usize>,
    /// Voxel spacing `[sd, sh, sw]` of the original image in mm.
    pub spacing: [f64; 3],
    /// Shape `[D, H, W]` of the original image.
    pub shape: [usize; 3],
}

impl PredictionFile {
    /// The predictions as an [`ImagePred`].
    pub fn to_image_pred(&self) -> ImagePred {
        ImagePred {
            boxes: self.boxes.clone(),
            scores: self.scores.clone(),
            classes: self.classes.clone(),
        }
    }

    /// Check lengths, boxes and scores; errors name the case and field.
    pub fn validate(&self) -> Result<(), MetricsError> {
        validate_case(&self.case, &ImageGt::default(), &self.to_image_pred(), None)?;
        if let Some(mm) = &self.boxes_mm {
            if mm.len() != self.boxes.len() {
                return Err(MetricsError::input(
                    &self.case,
                    "boxes_mm",
                    format!("{} boxes in mm for {} boxes", mm.len(), self.boxes.len()),
                ));
            }
            for (i, b) in mm.iter().enumerate() {
                crate::volume::boxes::validate(b)
                    .map_err(|m| MetricsError::input(&self.case, format!("boxes_mm[{i}]"), m))?;
            }
        }
        if self.spacing.iter().any(|s| !s.is_finite() || *s <= 0.0) {
            return Err(MetricsError::input(
                &self.case,
                "spacing",
                format!("{:?} is not a positive spacing", self.spacing),
            ));
        }
        Ok(())
    }

    /// Read and validate a prediction file (errors name the file, case and field).
    pub fn read(path: &Path) -> Result<PredictionFile, MetricsError> {
        let text = std::fs::read_to_string(path).map_err(|e| MetricsError::file(path, e))?;
        // Parse loosely first so that a wrong box length names its field.
        let v: Value = parse_json_exact(&text).map_err(|e| MetricsError::file(path, e))?;
        let case = v
            .get("case")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        if let Some(o) = v.as_object() {
            for field in ["boxes", "boxes_mm"] {
                if let Some(b) = o.get(field)
                    && !b.is_null()
                {
                    boxes(&case, field, Some(b)).map_err(|e| MetricsError::file(path, e))?;
                }
            }
            numbers(&case, "scores", o.get("scores")).map_err(|e| MetricsError::file(path, e))?;
            class_list(&case, "classes", o.get("classes"))
                .map_err(|e| MetricsError::file(path, e))?;
        }
        let file: PredictionFile =
            serde_json::from_value(v).map_err(|e| MetricsError::file(path, e))?;
        file.validate().map_err(|e| MetricsError::file(path, e))?;
        Ok(file)
    }

    /// Write the file atomically (pretty JSON).
    pub fn write(&self, path: &Path) -> Result<(), MetricsError> {
        self.validate()?;
        let text = serde_json::to_string_pretty(self).map_err(|e| MetricsError::file(path, e))?;
        crate::util::atomic_write(path, text.as_bytes()).map_err(|e| MetricsError::file(path, e))
    }
}

/// Read every `*.json` prediction file of a folder, sorted by case id; each file's `case` must
/// match its file name.
pub fn read_prediction_dir(dir: &Path) -> Result<Vec<PredictionFile>, MetricsError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| MetricsError::file(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    paths.sort();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let file = PredictionFile::read(&p)?;
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if file.case != stem {
            return Err(MetricsError::file(
                &p,
                format!(
                    "field 'case' is '{}' but the file is named '{stem}.json'",
                    file.case
                ),
            ));
        }
        out.push(file);
    }
    out.sort_by(|a, b| a.case.cmp(&b.case));
    Ok(out)
}

/// Where a case's label files live in an nnDetection raw dataset: `labelsTr/` or `labelsTs/`
/// (also under `raw_splitted/`). Returns the `.nii.gz` path, or `None`.
pub fn find_label_file(dataset: &Path, case: &str) -> Option<PathBuf> {
    for base in [dataset.to_path_buf(), dataset.join("raw_splitted")] {
        for split in ["labelsTr", "labelsTs"] {
            for ext in ["nii.gz", "nii"] {
                let p = base.join(split).join(format!("{case}.{ext}"));
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// Parse nnDetection's label JSON (`{"instances": {"1": 0, "2": 1}}`): instance id → class.
pub fn read_instances(path: &Path) -> Result<BTreeMap<u32, usize>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|e| MetricsError::file(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| MetricsError::file(path, e))?;
    let inst = v
        .get("instances")
        .and_then(Value::as_object)
        .ok_or_else(|| MetricsError::file(path, "missing object 'instances'"))?;
    let mut out = BTreeMap::new();
    for (k, c) in inst {
        let id: u32 = k.trim().parse().map_err(|_| {
            MetricsError::file(path, format!("instances: key '{k}' is not an instance id"))
        })?;
        let class = c.as_u64().ok_or_else(|| {
            MetricsError::file(path, format!("instances.{k}: {c} is not a class index"))
        })?;
        out.insert(id, class as usize);
    }
    Ok(out)
}

/// The number of classes of an nnDetection dataset: the size of the `labels` map of its
/// `dataset.json` or `dataset.yaml`; `None` when neither file exists.
pub fn read_dataset_num_classes(dataset: &Path) -> Result<Option<usize>, MetricsError> {
    for name in ["dataset.json", "dataset.yaml", "dataset.yml"] {
        let path = dataset.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| MetricsError::file(&path, e))?;
        let v: serde_json::Value = if name.ends_with("json") {
            serde_json::from_str(&text).map_err(|e| MetricsError::file(&path, e))?
        } else {
            serde_yaml::from_str(&text).map_err(|e| MetricsError::file(&path, e))?
        };
        let labels = v
            .get("labels")
            .and_then(Value::as_object)
            .ok_or_else(|| MetricsError::file(&path, "missing map 'labels'"))?;
        return Ok(Some(labels.len()));
    }
    Ok(None)
}

/// The class names of an nnDetection dataset by class index: the `labels` map (`"0": "lesion"`)
/// of its `dataset.json` or `dataset.yaml`; `None` when neither file exists. Keys must be the
/// indices 0..K−1.
pub fn read_dataset_class_names(dataset: &Path) -> Result<Option<Vec<String>>, MetricsError> {
    for name in ["dataset.json", "dataset.yaml", "dataset.yml"] {
        let path = dataset.join(name);
        if !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| MetricsError::file(&path, e))?;
        let v: serde_json::Value = if name.ends_with("json") {
            serde_json::from_str(&text).map_err(|e| MetricsError::file(&path, e))?
        } else {
            serde_yaml::from_str(&text).map_err(|e| MetricsError::file(&path, e))?
        };
        let labels = v
            .get("labels")
            .and_then(Value::as_object)
            .ok_or_else(|| MetricsError::file(&path, "missing map 'labels'"))?;
        let mut names = vec![None; labels.len()];
        for (key, value) in labels {
            let slot = key
                .trim()
                .parse::<usize>()
                .ok()
                .and_then(|k| names.get_mut(k))
                .ok_or_else(|| {
                    MetricsError::file(
                        &path,
                        format!(
                            "labels: key '{key}' is not a class index 0..{}",
                            labels.len()
                        ),
                    )
                })?;
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            *slot = Some(text);
        }
        return Ok(Some(
            names.into_iter().map(Option::unwrap_or_default).collect(),
        ));
    }
    Ok(None)
}

/// Read a case's GT from an nnDetection raw dataset: the instance mask `labelsTr/<case>.nii.gz`
/// (or `labelsTs`) and its `<case>.json` instance → class map; boxes use nnDetection's
/// `(min − 1, max + 1)` convention.
pub fn read_dataset_gt(dataset: &Path, case: &str) -> Result<ImageGt, MetricsError> {
    let label = find_label_file(dataset, case).ok_or_else(|| {
        MetricsError::input(
            case,
            "labels",
            format!(
                "no labelsTr/{case}.nii.gz or labelsTs/{case}.nii.gz in {}",
                dataset.display()
            ),
        )
    })?;
    let json = label.with_file_name(format!("{case}.json"));
    let instances = read_instances(&json)?;
    let volume = crate::volume::read_nifti(&label).map_err(|e| MetricsError::file(&label, e))?;
    let view = volume.data.index_axis(ndarray::Axis(0), 0);
    let found = crate::volume::boxes::mask_to_boxes(
        &view,
        crate::volume::boxes::BoxConvention::NnDetection,
    )
    .map_err(|e| MetricsError::file(&label, e))?;
    let mut gt = ImageGt::default();
    for (id, b) in found {
        let class = *instances.get(&id).ok_or_else(|| {
            MetricsError::file(
                &json,
                format!("instance {id} is in the mask but not in 'instances'"),
            )
        })?;
        gt.boxes.push(b);
        gt.classes.push(class);
    }
    Ok(gt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_typed_read_gives_the_general_readers_values() {
        // Hard cases for float parsing: halfway and long mantissas, a subnormal boundary,
        // an integer past 2^53.
        let text = r#"{"classes": ["a", "b"], "cases": [
            {"id": 7, "gt": {"boxes": [[0.1, 0.30000000000000004441, 2.2250738585072011e-308,
                1, 9007199254740993, 1e300]], "classes": [1]},
             "pred": {"boxes": [[0, 0, 0, 1.5, 1.5, 1.5]], "scores": [0.12345678901234567890123],
                "classes": [0]}},
            {"id": "x"}, {"pred": null}]}"#;
        let typed = EvalInput::from_json_typed(text).expect("well-formed input");
        assert_eq!(typed, EvalInput::from_json_general(text).unwrap());
        assert_eq!(typed.cases[0].id, "7");
        assert_eq!(typed.cases[2].id, "#2");
        assert_eq!(
            typed.cases[0].gt.boxes[0][1].to_bits(),
            0.30000000000000004f64.to_bits()
        );
        // Python's NaN, a class written as 1.0 and a duplicate id are left to the general
        // reader (which accepts the class and words the other errors).
        let float_class =
            r#"{"cases": [{"id": "a", "gt": {"boxes": [[0,0,0,1,1,1]], "classes": [1.0]}}]}"#;
        assert!(EvalInput::from_json_typed(float_class).is_none());
        let read = EvalInput::from_json_str(float_class).unwrap();
        assert_eq!(read.cases[0].gt.classes, vec![1]);
        let twice = r#"{"cases": [{"id": "a"}, {"id": "a"}]}"#;
        assert!(EvalInput::from_json_typed(twice).is_none());
        assert!(
            EvalInput::from_json_str(twice)
                .unwrap_err()
                .to_string()
                .contains("duplicate case id")
        );
    }

    #[test]
    fn input_errors_name_case_and_field() {
        let err = |text: &str| EvalInput::from_json_str(text).unwrap_err().to_string();
        let e = err(r#"{"cases": [{"id": "c7", "gt": {"boxes": [[0,0,0,1,1]], "classes": [0]}}]}"#);
        assert!(
            e.contains("c7") && e.contains("gt.boxes[0]") && e.contains("6 numbers"),
            "{e}"
        );
        let e = err(
            r#"{"cases": [{"id": "c1", "pred": {"boxes": [[2,0,0,1,1,1]], "scores": [1], "classes": [0]}}]}"#,
        );
        assert!(
            e.contains("c1") && e.contains("pred.boxes[0]") && e.contains("min > max"),
            "{e}"
        );
        let e = err(
            r#"{"classes": ["a"], "cases": [{"id": "c2", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [1], "classes": [1]}}]}"#,
        );
        assert!(
            e.contains("c2") && e.contains("pred.classes[0]") && e.contains("out of range"),
            "{e}"
        );
        let e = err(
            r#"{"cases": [{"id": "c3", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [], "classes": [0]}}]}"#,
        );
        assert!(e.contains("c3") && e.contains("pred.scores"), "{e}");
        let e = err(
            r#"{"cases": [{"id": "c4", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [null], "classes": [0]}}]}"#,
        );
        assert!(e.contains("c4") && e.contains("pred.scores[0]"), "{e}");
        let e = err(r#"{"cases": [{"id": "c5", "gt": {"boxes": [], "classes": [-1]}}]}"#);
        assert!(e.contains("c5") && e.contains("gt.classes[0]"), "{e}");
        // Python's json.dump writes a bare NaN; the id string containing "NaN" stays as it is.
        let e = err(
            r#"{"cases": [{"id": "NaN \"c6\"", "pred": {"boxes": [[0,0,0,1,1,1]], "scores": [NaN], "classes": [0]}}]}"#,
        );
        assert!(
            e.contains(r#"NaN "c6""#) && e.contains("pred.scores[0]") && e.contains("not finite"),
            "{e}"
        );
        let e = err(
            r#"{"cases": [{"id": "c8", "gt": {"boxes": [[0,0,0,1,1,-Infinity]], "classes": [0]}}]}"#,
        );
        assert!(
            e.contains("c8") && e.contains("gt.boxes[0]") && e.contains("non-finite"),
            "{e}"
        );
        let e = err(r#"{"cases": [{"id": "a"}, {"id": "a"}]}"#);
        assert!(e.contains("duplicate"), "{e}");
    }

    #[test]
    fn json_numbers_are_parsed_exactly() {
        let v = parse_json_exact(r#"{"a": [0.18421052631578946, 1e-3, -2, 18446744073709551615, 3.0], "s": "x\"\u00e9", "n": NaN, "i": -Infinity}"#).unwrap();
        assert_eq!(
            v["a"][0].as_f64().unwrap(),
            "0.18421052631578946".parse::<f64>().unwrap()
        );
        assert_eq!(v["a"][1].as_f64().unwrap(), 0.001);
        assert_eq!(v["a"][2].as_i64().unwrap(), -2);
        assert_eq!(v["a"][3].as_u64().unwrap(), u64::MAX);
        assert_eq!(v["s"].as_str().unwrap(), "x\"\u{e9}");
        assert_eq!(
            (v["n"].as_str(), v["i"].as_str()),
            (Some("NaN"), Some("-Infinity"))
        );
        // Every float of the metric fixture parses as Rust's correctly rounded parser does.
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/metrics/cross_checked.json"
        ));
        let ours = parse_json_exact(text).unwrap();
        let mut floats = Vec::new();
        fn collect(v: &Value, out: &mut Vec<f64>) {
            match v {
                Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
                Value::Object(o) => o.values().for_each(|x| collect(x, out)),
                Value::Number(n) if n.is_f64() => out.push(n.as_f64().unwrap()),
                _ => {}
            }
        }
        collect(&ours, &mut floats);
        // The file was written by Python (shortest round-trip repr): a parse that is one ulp
        // off prints differently and is not found in the text.
        assert!(floats.len() > 2000);
        for f in &floats {
            assert!(
                text.contains(&format!("{f:?}")),
                "{f:?} is not in the fixture text"
            );
        }
        let e = parse_json_exact("{\n  \"a\": [1, 2,,]\n}").unwrap_err();
        assert!(e.contains("line 2 column 14"), "{e}");
    }

    #[test]
    fn input_parses_and_counts_classes() {
        let input = EvalInput::from_json_str(r#"{"cases": [{"id": "a", "gt": {"boxes": [[0,0,0,2,2,2]], "classes": [2]}, "pred": {"boxes": [], "scores": [], "classes": []}}, {"id": "b"}]}"#).unwrap();
        assert_eq!(input.num_classes(), 3);
        assert_eq!(input.cases[1].gt, ImageGt::default());
        assert_eq!(input.gt()[0].boxes[0], [0.0, 0.0, 0.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn prediction_file_round_trips_and_names_bad_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = PredictionFile {
            case: "case_1".into(),
            boxes: vec![[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]],
            boxes_mm: None,
            scores: vec![0.5],
            classes: vec![0],
            spacing: [1.0, 0.5, 0.5],
            shape: [10, 20, 20],
        };
        let path = dir.path().join("case_1.json");
        file.write(&path).unwrap();
        assert_eq!(PredictionFile::read(&path).unwrap(), file);
        assert_eq!(read_prediction_dir(dir.path()).unwrap(), vec![file.clone()]);
        std::fs::write(
            dir.path().join("other.json"),
            serde_json::to_string(&file).unwrap(),
        )
        .unwrap();
        let e = read_prediction_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("other.json") && e.contains("case_1"), "{e}");
        std::fs::write(&path, r#"{"case": "case_1", "boxes": [[1,2,3,4,5]], "scores": [0.5], "classes": [0], "spacing": [1,1,1], "shape": [1,1,1]}"#).unwrap();
        let e = PredictionFile::read(&path).unwrap_err().to_string();
        assert!(e.contains("case_1") && e.contains("boxes[0]"), "{e}");
    }
}
