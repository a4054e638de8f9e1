//! Deterministic train/validation(/test) splits and k-fold cross-validation.
//!
//! Splits are made like nnDetection's `splits_final.pkl`: case ids are sorted, then shuffled
//! with numpy's legacy `RandomState(seed).shuffle` (re-implemented bit-exactly: MT19937 and
//! numpy's masked rejection sampling) and cut like scikit-learn's `KFold(shuffle=True)`:
//! the first `n % k` folds get one extra case. With the default seed 12345 and 5 folds the
//! folds equal nnDetection's for the same case ids. Lists inside a fold are sorted.
//!
//! # `splits.json`
//! Saved beside the data (the dataset root). Two accepted layouts:
//! - a list of folds, as nnDetection and nnU-Net store them:
//!   `[{"train": ["case0000", …], "val": ["case0003", …]}, …]`;
//! - a map with the folds and a held-out test list (cases of `imagesTr` kept out of every fold):
//!   `{"folds": [{"train": […], "val": […]}, …], "test": ["case0007", …]}`.
//!
//! The list form is written when there is no test list, the map form otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::DataError;

/// nnDetection's default split seed.
pub const DEFAULT_SPLIT_SEED: u64 = 12345;
/// nnDetection's default number of cross-validation folds.
pub const DEFAULT_FOLDS: usize = 5;

/// One cross-validation fold: the training and validation case ids.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fold {
    /// Case ids used for training in this fold.
    pub train: Vec<String>,
    /// Case ids used for validation in this fold.
    pub val: Vec<String>,
}

/// A set of folds plus an optional held-out test list (empty when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Splits {
    /// The folds, in order.
    pub folds: Vec<Fold>,
    /// Held-out test case ids (from the training images) that no fold uses; may be empty.
    pub test: Vec<String>,
}

impl Splits {
    /// k-fold cross-validation over `case_ids`, deterministic in `seed` (nnDetection: 5, 12345).
    pub fn k_fold(case_ids: &[String], folds: usize, seed: u64) -> Result<Splits, DataError> {
        let ids = sorted_unique(case_ids)?;
        if folds < 2 {
            return Err(generated_error(format!(
                "k-fold needs at least 2 folds, got {folds}"
            )));
        }
        if folds > ids.len() {
            return Err(generated_error(format!(
                "cannot make {folds} folds from {} case(s)",
                ids.len()
            )));
        }
        let order = numpy_shuffled_indices(ids.len(), seed)?;
        let n = ids.len();
        let mut start = 0;
        let mut out = Vec::with_capacity(folds);
        for k in 0..folds {
            let size = n / folds + usize::from(k < n % folds);
            let val_idx: BTreeSet<usize> = order[start..start + size].iter().copied().collect();
            start += size;
            let val = val_idx.iter().map(|&i| ids[i].clone()).collect();
            let train = (0..n)
                .filter(|i| !val_idx.contains(i))
                .map(|i| ids[i].clone())
                .collect();
            out.push(Fold { train, val });
        }
        Ok(Splits {
            folds: out,
            test: Vec::new(),
        })
    }

    /// One train/validation/test split: the shuffled ids give `round(n·test_fraction)` test cases,
    /// then `round(n·val_fraction)` validation cases; the rest train.
    pub fn train_val_test(
        case_ids: &[String],
        val_fraction: f64,
        test_fraction: f64,
        seed: u64,
    ) -> Result<Splits, DataError> {
        let ids = sorted_unique(case_ids)?;
        for (name, f) in [
            ("val_fraction", val_fraction),
            ("test_fraction", test_fraction),
        ] {
            if !(0.0..1.0).contains(&f) {
                return Err(generated_error(format!(
                    "{name} must be in [0, 1), got {f}"
                )));
            }
        }
        let n = ids.len();
        let n_test = (n as f64 * test_fraction).round() as usize;
        let n_val =
            ((n as f64 * val_fraction).round() as usize).max(usize::from(val_fraction > 0.0));
        if n_test + n_val >= n {
            return Err(generated_error(format!(
                "{n} case(s) cannot give {n_test} test and {n_val} validation case(s) and still leave a training case"
            )));
        }
        let order = numpy_shuffled_indices(n, seed)?;
        let pick = |range: std::ops::Range<usize>| -> Vec<String> {
            let mut v: Vec<String> = order[range].iter().map(|&i| ids[i].clone()).collect();
            v.sort();
            v
        };
        let test = pick(0..n_test);
        let val = pick(n_test..n_test + n_val);
        let train = pick(n_test + n_val..n);
        Ok(Splits {
            folds: vec![Fold { train, val }],
            test,
        })
    }

    /// The fold with index `k`.
    pub fn fold(&self, k: usize) -> Result<&Fold, DataError> {
        self.folds.get(k).ok_or_else(|| {
            generated_error(format!(
                "fold {k} does not exist; there are {} fold(s)",
                self.folds.len()
            ))
        })
    }

    /// Check the splits against the dataset's case ids: every id known, no case both in train and
    /// val of a fold, no duplicates, test cases in no fold. All problems are reported together.
    pub fn validate(&self, known_ids: &[String], path: &Path) -> Result<(), DataError> {
        let known: BTreeSet<&str> = known_ids.iter().map(String::as_str).collect();
        let mut problems = Vec::new();
        let mut unknown: BTreeSet<&str> = BTreeSet::new();
        if self.folds.is_empty() {
            problems.push("there are no folds".to_string());
        }
        let test: BTreeSet<&str> = self.test.iter().map(String::as_str).collect();
        if test.len() != self.test.len() {
            problems.push("the test list has duplicate case ids".to_string());
        }
        for id in &self.test {
            if !known.contains(id.as_str()) {
                unknown.insert(id);
            }
        }
        for (k, fold) in self.folds.iter().enumerate() {
            if fold.train.is_empty() {
                problems.push(format!("fold {k} has no training cases"));
            }
            let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
            for (list, ids) in [("train", &fold.train), ("val", &fold.val)] {
                for id in ids {
                    if !known.contains(id.as_str()) {
                        unknown.insert(id);
                    }
                    if let Some(prev) = seen.insert(id, list) {
                        problems.push(format!(
                            "fold {k}: case {id:?} appears in `{prev}` and `{list}`"
                        ));
                    }
                    if test.contains(id.as_str()) {
                        problems.push(format!("fold {k}: case {id:?} is also in the test list"));
                    }
                }
            }
        }
        if !unknown.is_empty() {
            let list: Vec<&str> = unknown.into_iter().collect();
            problems.insert(
                0,
                format!(
                    "unknown case id(s) not in the dataset's training cases: {}",
                    list.join(", ")
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DataError::Split {
                path: path.to_path_buf(),
                message: problems.join("; "),
            })
        }
    }

    /// Parse a splits file (either layout described in the module docs).
    pub fn load(path: &Path) -> Result<Splits, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| DataError::parse(path, format!("invalid JSON: {e}")))?;
        Self::from_json(value).map_err(|message| DataError::Split {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parse splits from a JSON value (list of folds, or `{"folds": [...], "test": [...]}`).
    pub fn from_json(value: Value) -> Result<Splits, String> {
        let folds_of = |v: Value| -> Result<Vec<Fold>, String> {
            serde_json::from_value(v).map_err(|e| {
                format!("folds must be a list of {{\"train\": [...], \"val\": [...]}}: {e}")
            })
        };
        match value {
            Value::Array(_) => Ok(Splits {
                folds: folds_of(value)?,
                test: Vec::new(),
            }),
            Value::Object(mut map) => {
                let folds = folds_of(map.remove("folds").ok_or("missing field `folds`")?)?;
                let test = match map.remove("test") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => serde_json::from_value(v)
                        .map_err(|e| format!("`test` must be a list of case ids: {e}"))?,
                };
                if let Some(k) = map.keys().next() {
                    return Err(format!("unknown field `{k}` (expected `folds` and `test`)"));
                }
                Ok(Splits { folds, test })
            }
            _ => Err("expected a list of folds or a map with `folds` and `test`".into()),
        }
    }

    /// The JSON form written to `splits.json`.
    pub fn to_json(&self) -> Value {
        let folds = serde_json::to_value(&self.folds).unwrap_or(Value::Null);
        if self.test.is_empty() {
            folds
        } else {
            serde_json::json!({ "folds": folds, "test": self.test })
        }
    }

    /// Write the splits to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let text =
            serde_json::to_string_pretty(&self.to_json()).map_err(|e| DataError::parse(path, e))?;
        crate::util::atomic_write(path, text.as_bytes()).map_err(|e| DataError::io(path, e))
    }
}

fn generated_error(message: String) -> DataError {
    DataError::Split {
        path: PathBuf::from("<generated>"),
        message,
    }
}

fn sorted_unique(ids: &[String]) -> Result<Vec<String>, DataError> {
    let mut v = ids.to_vec();
    v.sort();
    let before = v.len();
    v.dedup();
    if v.len() != before {
        return Err(generated_error("the case ids contain duplicates".into()));
    }
    if v.is_empty() {
        return Err(generated_error("there are no cases to split".into()));
    }
    Ok(v)
}

/// `np.random.RandomState(seed).shuffle(np.arange(n))`, bit-exact.
fn numpy_shuffled_indices(n: usize, seed: u64) -> Result<Vec<usize>, DataError> {
    let seed = u32::try_from(seed)
        .map_err(|_| generated_error(format!("the split seed must be below 2^32, got {seed}")))?;
    let mut rng = Mt19937::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        v.swap(i, j);
    }
    Ok(v)
}

/// The Mersenne Twister exactly as numpy's legacy `RandomState` seeds and draws it.
struct Mt19937 {
    state: [u32; 624],
    index: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            state[i] = 1_812_433_253u32
                .wrapping_mul(state[i - 1] ^ (state[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, index: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.state[i] = self.state[(i + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection.
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16] {
            mask |= mask >> shift;
        }
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("case{i:03}")).collect()
    }

    #[test]
    fn shuffle_matches_numpy_random_state() {
        // np.random.RandomState(12345).shuffle(np.arange(n)) with numpy 1.26.4
        assert_eq!(
            numpy_shuffled_indices(10, 12345).unwrap(),
            vec![0, 7, 3, 9, 6, 4, 1, 8, 5, 2]
        );
        assert_eq!(
            numpy_shuffled_indices(5, 12345).unwrap(),
            vec![0, 4, 3, 1, 2]
        );
        assert_eq!(
            numpy_shuffled_indices(23, 12345).unwrap(),
            vec![
                10, 19, 8, 17, 3, 12, 16, 0, 15, 7, 18, 11, 14, 6, 20, 13, 22, 21, 9, 4, 1, 5, 2
            ]
        );
    }

    #[test]
    fn k_fold_matches_sklearn_kfold_and_is_deterministic() {
        // KFold(5, shuffle=True, random_state=12345) on 10 ids: val folds are consecutive
        // pairs of the shuffled order [0,7,3,9,6,4,1,8,5,2], sorted.
        let shuffled_input: Vec<String> = ids(10).into_iter().rev().collect();
        let s = Splits::k_fold(&shuffled_input, 5, 12345).unwrap();
        let val0: Vec<String> = vec!["case000".into(), "case007".into()];
        assert_eq!(s.folds[0].val, val0);
        assert_eq!(
            s.folds[1].val,
            vec!["case003".to_string(), "case009".to_string()]
        );
        assert_eq!(
            s.folds[4].val,
            vec!["case002".to_string(), "case005".to_string()]
        );
        for f in &s.folds {
            assert_eq!(f.train.len() + f.val.len(), 10);
            assert!(f.val.iter().all(|v| !f.train.contains(v)));
        }
        let all_val: BTreeSet<&String> = s.folds.iter().flat_map(|f| &f.val).collect();
        assert_eq!(all_val.len(), 10);
        assert_eq!(Splits::k_fold(&ids(10), 5, 12345).unwrap(), s);
        assert_ne!(Splits::k_fold(&ids(10), 5, 1).unwrap(), s);
        // 23 cases: the first 3 folds get 5 cases, the others 4.
        let s = Splits::k_fold(&ids(23), 5, 12345).unwrap();
        let sizes: Vec<usize> = s.folds.iter().map(|f| f.val.len()).collect();
        assert_eq!(sizes, vec![5, 5, 5, 4, 4]);
    }

    #[test]
    fn train_val_test_partitions_all_cases() {
        let s = Splits::train_val_test(&ids(20), 0.2, 0.1, 7).unwrap();
        assert_eq!(s.test.len(), 2);
        assert_eq!(s.folds[0].val.len(), 4);
        assert_eq!(s.folds[0].train.len(), 14);
        s.validate(&ids(20), Path::new("x")).unwrap();
        assert!(Splits::train_val_test(&ids(3), 0.5, 0.5, 7).is_err());
    }

    #[test]
    fn json_round_trip_in_both_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("splits.json");
        let folds = Splits::k_fold(&ids(6), 3, 12345).unwrap();
        folds.save(&p).unwrap();
        assert!(
            std::fs::read_to_string(&p)
                .unwrap()
                .trim_start()
                .starts_with('[')
        );
        assert_eq!(Splits::load(&p).unwrap(), folds);
        let with_test = Splits::train_val_test(&ids(10), 0.2, 0.2, 3).unwrap();
        with_test.save(&p).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("\"test\""));
        assert_eq!(Splits::load(&p).unwrap(), with_test);
    }

    #[test]
    fn validation_reports_unknown_ids_and_overlaps() {
        let s = Splits {
            folds: vec![Fold {
                train: vec!["case000".into(), "ghost".into()],
                val: vec!["case000".into()],
            }],
            test: vec!["case001".into(), "phantom".into()],
        };
        let err = s
            .validate(&ids(3), Path::new("/d/splits.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/d/splits.json"), "{err}");
        assert!(
            err.contains("unknown case id(s)") && err.contains("ghost") && err.contains("phantom"),
            "{err}"
        );
        assert!(err.contains("appears in `train` and `val`"), "{err}");
    }

    #[test]
    fn malformed_files_are_rejected_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("splits.json");
        std::fs::write(&p, r#"[{"train": ["a"], "validation": ["b"]}]"#).unwrap();
        let err = Splits::load(&p).unwrap_err().to_string();
        assert!(
            err.contains("splits.json") && err.contains("validation"),
            "{err}"
        );
        assert!(Splits::k_fold(&ids(3), 5, 1).is_err());
        assert!(Splits::k_fold(&ids(3), 2, 1 << 40).is_err());
    }
}
