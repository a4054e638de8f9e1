//! Registration of primitives: one call registers the Rust function with Rhai (with its doc
//! comment as metadata) and records the same text in the [`HelpIndex`].

use super::help::{EntryKind, HelpEntry, HelpIndex, Signature};
use super::options::OptionSet;
use rhai::{Engine, FuncRegistration, RhaiNativeFunc, Variant};

/// Registers the primitives of one domain package.
pub struct Registrar<'a> {
    engine: &'a mut Engine,
    help: &'a mut HelpIndex,
    domain: String,
}

/// Split `name(a: T, b: U) -> R` into the name and Rhai's params-info list.
fn parse_signature(signature: &str) -> (String, Vec<String>) {
    let open = signature.find('(').unwrap_or(signature.len());
    let name = signature[..open].trim().to_string();
    let close = signature.rfind(')').unwrap_or(signature.len());
    let mut params: Vec<String> = Vec::new();
    if open < close {
        let inner = &signature[open + 1..close];
        let mut depth = 0i32;
        let mut current = String::new();
        for c in inner.chars() {
            match c {
                '[' | '(' | '{' | '<' => depth += 1,
                ']' | ')' | '}' | '>' => depth -= 1,
                _ => {}
            }
            if c == ',' && depth == 0 {
                params.push(current.trim().to_string());
                current.clear();
            } else {
                current.push(c);
            }
        }
        if !current.trim().is_empty() {
            params.push(current.trim().to_string());
        }
    }
    if let Some(ret) = signature[close.min(signature.len())..].split("->").nth(1) {
        params.push(ret.trim().to_string());
    }
    (name, params)
}

impl<'a> Registrar<'a> {
    /// Start registering the primitives of `domain` (described in one line for `help()`).
    pub fn new(
        engine: &'a mut Engine,
        help: &'a mut HelpIndex,
        domain: &str,
        description: &str,
    ) -> Self {
        help.add_domain(domain, description);
        Registrar {
            engine,
            help,
            domain: domain.to_string(),
        }
    }

    /// The engine, for registrations that need it directly (types, iterators).
    pub fn engine(&mut self) -> &mut Engine {
        self.engine
    }

    /// Declare the options map of a primitive: `help` prints its table, errors list its keys
    /// and the REPL completes them.
    pub fn options(&mut self, set: OptionSet) -> &mut Self {
        super::options::register(set);
        self
    }

    fn record(
        &mut self,
        kind: EntryKind,
        receiver: Option<&str>,
        signature: &str,
        doc: &str,
        example: &str,
    ) -> (String, Vec<String>) {
        let (mut name, params) = parse_signature(signature);
        if kind == EntryKind::Property {
            // `name -> Type`: the type may have no parentheses to end the name at.
            name = signature
                .split("->")
                .next()
                .unwrap_or(signature)
                .trim()
                .to_string();
        }
        self.help.add(HelpEntry {
            name: name.clone(),
            domain: self.domain.clone(),
            kind,
            signatures: vec![Signature {
                receiver: receiver.map(str::to_string),
                text: signature.to_string(),
            }],
            doc: doc.trim().to_string(),
            example: example.trim().to_string(),
        });
        (name, params)
    }

    fn comments(doc: &str) -> Vec<String> {
        doc.trim().lines().map(|l| format!("/// {l}")).collect()
    }

    /// Register a free function `name(args)`; `signature` reads like `name(a: T) -> R`.
    pub fn func<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Variant + Clone,
        const F: bool,
        FUNC,
    >(
        &mut self,
        signature: &str,
        doc: &str,
        example: &str,
        f: FUNC,
    ) -> &mut Self
    where
        FUNC: RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    {
        let (name, params) = self.record(EntryKind::Function, None, signature, doc, example);
        FuncRegistration::new(name)
            .with_params_info(params)
            .with_comments(Self::comments(doc))
            .register_into_engine(self.engine, f);
        self
    }

    /// Register a method `value.name(args)` on values of type `receiver`.
    ///
    /// The Rust function takes the receiver as its first parameter (`&mut T`).
    pub fn method<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Variant + Clone,
        const F: bool,
        FUNC,
    >(
        &mut self,
        receiver: &str,
        signature: &str,
        doc: &str,
        example: &str,
        f: FUNC,
    ) -> &mut Self
    where
        FUNC: RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    {
        let (name, mut params) =
            self.record(EntryKind::Method, Some(receiver), signature, doc, example);
        params.insert(0, format!("self: {receiver}"));
        FuncRegistration::new(name)
            .with_params_info(params)
            .with_comments(Self::comments(doc))
            .register_into_engine(self.engine, f);
        self
    }

    /// Register a read-only property `value.name` on values of type `receiver`.
    pub fn getter<T: Variant + Clone, R: Variant + Clone>(
        &mut self,
        receiver: &str,
        name: &str,
        returns: &str,
        doc: &str,
        f: impl Fn(&mut T) -> R + Send + Sync + 'static,
    ) -> &mut Self {
        self.record(
            EntryKind::Property,
            Some(receiver),
            &format!("{name} -> {returns}"),
            doc,
            "",
        );
        self.engine.register_get(name, f);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::parse_signature;

    #[test]
    fn signatures_split_into_name_params_and_return() {
        let (n, p) = parse_signature("resample(spacing: [f64; 3], options: Map) -> Volume");
        assert_eq!(n, "resample");
        assert_eq!(p, vec!["spacing: [f64; 3]", "options: Map", "Volume"]);
        let (n, p) = parse_signature("help()");
        assert_eq!(n, "help");
        assert!(p.is_empty());
    }
}
