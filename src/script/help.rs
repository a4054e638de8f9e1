//! The help index: one entry per script primitive, grouped by domain.
//!
//! Every registration goes through [`super::registrar::Registrar`], which records the same
//! doc text in Rhai's metadata and here, so `help("name")` and `Engine::definitions()` agree.

use std::collections::BTreeMap;

/// What kind of primitive an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A free function, `name(args)`.
    Function,
    /// A method, `value.name(args)`, whose receiver has the given type.
    Method,
    /// A read-only property, `value.name`.
    Property,
}

/// One overload of a primitive: its signature line.
#[derive(Debug, Clone)]
pub struct Signature {
    /// Receiver type for methods and properties (e.g. "Volume").
    pub receiver: Option<String>,
    /// The signature as users read it, e.g. `resample(spacing: [f64; 3]) -> Volume`.
    pub text: String,
}

/// The documentation of one primitive name (all overloads together).
#[derive(Debug, Clone)]
pub struct HelpEntry {
    /// Primitive name as typed in scripts.
    pub name: String,
    /// Domain package (volume, data, plot, …) the primitive belongs to.
    pub domain: String,
    /// Function, method or property.
    pub kind: EntryKind,
    /// Every registered overload.
    pub signatures: Vec<Signature>,
    /// Description; the first line is the summary shown in listings.
    pub doc: String,
    /// A short example script.
    pub example: String,
}

impl HelpEntry {
    /// The first line of the description.
    pub fn summary(&self) -> &str {
        self.doc.lines().next().unwrap_or("")
    }

    /// The full help text: signatures, description and example.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.signatures {
            match (&s.receiver, self.kind) {
                (Some(r), EntryKind::Property) => out.push_str(&format!("{r}.{}\n", s.text)),
                (Some(r), _) => out.push_str(&format!("{r}.{}\n", s.text)),
                (None, _) => out.push_str(&format!("{}\n", s.text)),
            }
        }
        out.push('\n');
        for line in self.doc.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        if !self.example.is_empty() {
            out.push_str("\nExample:\n");
            for line in self.example.lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&format!("\n[{}]", self.domain));
        out
    }
}

/// All primitives by name, plus the order of domains for listings.
#[derive(Debug, Clone, Default)]
pub struct HelpIndex {
    entries: BTreeMap<String, HelpEntry>,
    domains: Vec<(String, String)>,
}

impl HelpIndex {
    /// Declare a domain (package) with a one-line description; listings keep this order.
    pub fn add_domain(&mut self, name: &str, description: &str) {
        if !self.domains.iter().any(|(n, _)| n == name) {
            self.domains
                .push((name.to_string(), description.to_string()));
        }
    }

    /// Record one overload; the doc and example of the first registration win.
    pub fn add(&mut self, entry: HelpEntry) {
        match self.entries.get_mut(&entry.name) {
            Some(existing) => {
                existing.signatures.extend(entry.signatures);
                if existing.doc.is_empty() {
                    existing.doc = entry.doc;
                }
                if existing.example.is_empty() {
                    existing.example = entry.example;
                }
            }
            None => {
                self.entries.insert(entry.name.clone(), entry);
            }
        }
    }

    /// Look up a primitive by name (also accepts `Type.name`).
    pub fn get(&self, name: &str) -> Option<&HelpEntry> {
        let name = name.trim().trim_end_matches("()");
        self.entries
            .get(name)
            .or_else(|| name.rsplit_once('.').and_then(|(_, n)| self.entries.get(n)))
    }

    /// All entries in name order.
    pub fn entries(&self) -> impl Iterator<Item = &HelpEntry> {
        self.entries.values()
    }

    /// Names that start with `prefix`, for completion.
    pub fn names_with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = &'a HelpEntry> + 'a {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// Methods and properties whose receiver type is `type_name`.
    pub fn members_of<'a>(
        &'a self,
        type_name: &'a str,
    ) -> impl Iterator<Item = &'a HelpEntry> + 'a {
        self.entries.values().filter(move |e| {
            e.kind != EntryKind::Function
                && e.signatures
                    .iter()
                    .any(|s| s.receiver.as_deref() == Some(type_name))
        })
    }

    /// The listing printed by `help()`: every primitive grouped by domain with its summary.
    pub fn overview(&self) -> String {
        let mut out = String::from(
            "detlab primitives, grouped by domain. `help(\"name\")` shows one in full.\n",
        );
        for (domain, description) in &self.domains {
            let mut items: Vec<&HelpEntry> = self
                .entries
                .values()
                .filter(|e| &e.domain == domain)
                .collect();
            if items.is_empty() {
                continue;
            }
            items.sort_by_key(|e| (e.kind != EntryKind::Function, e.name.clone()));
            out.push_str(&format!("\n{domain}: {description}\n"));
            for e in items {
                let label = match e.kind {
                    EntryKind::Function => format!("{}()", e.name),
                    EntryKind::Method => format!(
                        "{}.{}()",
                        e.signatures[0].receiver.as_deref().unwrap_or("?"),
                        e.name
                    ),
                    EntryKind::Property => {
                        format!(
                            "{}.{}",
                            e.signatures[0].receiver.as_deref().unwrap_or("?"),
                            e.name
                        )
                    }
                };
                out.push_str(&format!("  {label:<28} {}\n", e.summary()));
            }
        }
        out
    }
}
