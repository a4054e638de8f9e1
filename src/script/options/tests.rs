//! Tests of `options`.

use super::*;
use serde::Deserialize;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct Inner {
    momentum: f64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner { momentum: 0.9 }
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct Outer {
    lr: f64,
    epochs: usize,
    optimizer: Inner,
}

impl Default for Outer {
    fn default() -> Self {
        Outer {
            lr: 0.01,
            epochs: 2,
            optimizer: Inner::default(),
        }
    }
}

fn map(script: &str) -> Map {
    rhai::Engine::new().eval::<Map>(script).unwrap()
}

#[test]
fn integers_are_accepted_for_floats() {
    let o: Outer = deserialize("t", None, &map("#{lr: 1, optimizer: #{momentum: 0}}")).unwrap();
    assert_eq!(o.lr, 1.0);
    assert_eq!(o.optimizer.momentum, 0.0);
}

#[test]
fn errors_name_the_option_and_its_type() {
    let e = deserialize::<Outer>("t", None, &map("#{lr: \"0.1\"}")).unwrap_err();
    assert_eq!(
        e,
        "t: option `lr` must be a number (Float), got String \"0.1\""
    );
    let e = deserialize::<Outer>("t", None, &map("#{epochs: 1.5}")).unwrap_err();
    assert_eq!(
        e,
        "t: option `epochs` must be a non-negative integer (Int), got Float 1.5"
    );
    let e = deserialize::<Outer>("t", None, &map("#{optimizer: #{momentum: true}}")).unwrap_err();
    assert_eq!(
        e,
        "t: option `optimizer.momentum` must be a number (Float), got Bool true"
    );
    let e = deserialize::<Outer>("t", None, &map("#{optimizer: #{momentun: 1}}")).unwrap_err();
    assert!(
        e.starts_with("t: unknown option `optimizer.momentun`; did you mean `optimizer.momentum`?"),
        "{e}"
    );
}

#[test]
fn option_sets_list_keys_types_and_defaults() {
    let set = OptionSet::of::<crate::train::TrainConfig>("train").with(&[Extra::new(
        "ids",
        "[String, …]",
        "all",
        "Cases.",
    )]);
    let keys = set.keys();
    assert_eq!(&keys[..3], ["epochs", "iters_per_epoch", "batch"]);
    assert_eq!(keys.last(), Some(&"ids"));
    let lr = set.find(&["lr"]).unwrap();
    assert_eq!(
        (lr.type_name.as_str(), lr.default.as_str(), lr.doc.as_str()),
        (
            "Float",
            "0.01",
            "Peak learning rate (nnDetection: 0.01 for SGD)."
        )
    );
    let kind = set.find(&["optimizer", "kind"]).unwrap();
    assert_eq!(kind.type_name, "\"sgd\" | \"adam\" | \"adamw\"");
    assert_eq!(set.config_fields.len(), keys.len() - 1);
    let e = set.check(&map("#{lrr: 1}")).unwrap_err();
    assert!(
        e.starts_with(
            "train: unknown option `lrr`; did you mean `lr`? Expected one of: `epochs`, "
        ),
        "{e}"
    );
    let e = set.check(&map("#{optimizer: #{momentun: 1}}")).unwrap_err();
    assert!(
            e.starts_with("train: unknown option `optimizer.momentun`; did you mean `optimizer.momentum`? Expected one of in `optimizer`: `kind`"),
            "{e}"
        );
    assert!(
        set.check(&map("#{ids: [], optimizer: #{momentum: 0.5}}"))
            .is_ok()
    );
    assert!(set.render().contains("optimizer.momentum"));
}

#[test]
fn rust_types_read_as_script_types() {
    let m = "detlab::train::config";
    assert_eq!(
        script_type("[usize; 3]", m, &Value::Null),
        "[Int, Int, Int]"
    );
    assert_eq!(script_type("Option<f64>", m, &Value::Null), "Float or ()");
    assert_eq!(script_type("Vec<String>", m, &Value::Null), "[String, …]");
    assert_eq!(
        script_type("EncoderPart", m, &Value::Null),
        "\"all\" | \"stem\" | \"stages\""
    );
}
