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
    /// The signature as registered, e.g. `resample(spacing: [f64; 3]) -> Volume` (shown with
    /// script type names: `[Float; 3]`).
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

/// One overview line: (sort key: is-method, receiver, is-property, name), label, summary.
type OverviewLine = ((bool, String, bool, String), String, String);

impl HelpEntry {
    /// The first sentence of the description (its first paragraph, up to the first period),
    /// shortened to fit one listing line.
    pub fn summary(&self) -> String {
        let paragraph: Vec<&str> = self
            .doc
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        let text = paragraph.join(" ");
        let sentence = match text.find(". ") {
            Some(i) => &text[..=i],
            None => text.as_str(),
        };
        const MAX: usize = 96;
        if sentence.chars().count() > MAX {
            let cut: String = sentence.chars().take(MAX - 1).collect();
            format!("{}…", cut.trim_end())
        } else {
            sentence.to_string()
        }
    }

    /// The full help text: signatures, description, the options table (for a primitive that
    /// takes an options map) and example.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.signatures {
            let text = super::error::user_types_in(&s.text);
            match &s.receiver {
                Some(r) => out.push_str(&format!("{r}.{text}\n")),
                None => out.push_str(&format!("{text}\n")),
            }
        }
        out.push('\n');
        for line in self.doc.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        for set in super::options::sets_for(&self.name) {
            out.push('\n');
            for line in set.render().lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
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

    /// Record one overload; the doc and example of the first registration win. Functions are
    /// keyed by name, methods and properties by `Type.name`.
    pub fn add(&mut self, entry: HelpEntry) {
        let key = match entry.signatures.first().and_then(|s| s.receiver.as_deref()) {
            Some(r) => format!("{r}.{}", entry.name),
            None => entry.name.clone(),
        };
        match self.entries.get_mut(&key) {
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
                self.entries.insert(key, entry);
            }
        }
    }

    /// Look up a primitive: `name` finds the function and every method or property of that
    /// name; `Type.name` finds one member.
    pub fn lookup(&self, name: &str) -> Vec<&HelpEntry> {
        let name = name.trim().trim_end_matches("()");
        if let Some(e) = self.entries.get(name) {
            return vec![e];
        }
        let member = name.rsplit_once('.').map(|(_, n)| n).unwrap_or(name);
        self.entries.values().filter(|e| e.name == member).collect()
    }

    /// The full help text of `name` (all matching entries), if any.
    pub fn render(&self, name: &str) -> Option<String> {
        let found = self.lookup(name);
        if found.is_empty() {
            return None;
        }
        Some(
            found
                .iter()
                .map(|e| e.render())
                .collect::<Vec<_>>()
                .join("\n\n"),
        )
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
            // One line per function, and per (receiver type, member) for methods/properties.
            let mut lines: Vec<OverviewLine> = Vec::new();
            for e in self.entries.values().filter(|e| &e.domain == domain) {
                if e.kind == EntryKind::Function {
                    lines.push((
                        (false, String::new(), false, e.name.clone()),
                        format!("{}()", e.name),
                        e.summary(),
                    ));
                    continue;
                }
                let mut receivers: Vec<&str> = e
                    .signatures
                    .iter()
                    .filter_map(|s| s.receiver.as_deref())
                    .collect();
                receivers.dedup();
                for r in receivers {
                    let property = e.kind == EntryKind::Property;
                    let label = if property {
                        format!("{r}.{}", e.name)
                    } else {
                        format!("{r}.{}()", e.name)
                    };
                    lines.push((
                        (true, r.to_string(), property, e.name.clone()),
                        label,
                        e.summary(),
                    ));
                }
            }
            if lines.is_empty() {
                continue;
            }
            lines.sort();
            lines.dedup_by(|a, b| a.1 == b.1);
            out.push_str(&format!("\n{domain}: {description}\n"));
            for (_, label, summary) in lines {
                out.push_str(&format!("  {label:<34} {summary}\n"));
            }
        }
        out
    }
}
