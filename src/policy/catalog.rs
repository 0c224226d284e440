//! Entitlement catalogue: the names an identity provider knows, what each
//! one is for, and which product offerings license it.
//!
//! The shipped catalogue is `config/catalogs/verify-entitlements.tsv`, the
//! IBM Security Verify API-client entitlement table (see its header for
//! provenance). A catalogue can also be written as TOML. Either way the
//! loader reports every problem it finds, each with its 1-based line number,
//! so a broken file is fixed in one pass.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// Offering codes that may license an entitlement: exactly the codes used in
/// the IBM Security Verify entitlement tables. `any` is written separately.
pub const KNOWN_OFFERING_CODES: &[&str] = &["CIA", "CIC", "CIG", "CIV", "ISC"];

/// The header row a TSV catalogue must start with (after comments).
const TSV_HEADER: [&str; 3] = ["name", "description", "offering"];

/// Which offerings license an entitlement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offerings {
    /// Licensed by every offering.
    Any,
    /// Licensed when the tenant has at least one of these codes.
    Codes(Vec<String>),
}

impl Offerings {
    /// Parse `any` or a comma-separated list of known codes (spaces around
    /// the commas are tolerated, e.g. `CIC, CIV`).
    pub fn parse(text: &str) -> Result<Offerings, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty offering (expected `any` or codes such as `CIC,CIV`)".to_string());
        }
        if text == "any" {
            return Ok(Offerings::Any);
        }
        if text.eq_ignore_ascii_case("any") {
            return Err(format!("offering `{text}`: write `any` in lower case"));
        }
        let mut codes: Vec<String> = Vec::new();
        for code in text.split(',').map(str::trim) {
            if code.is_empty() {
                return Err(format!("empty code in offering `{text}`"));
            }
            if code.eq_ignore_ascii_case("any") {
                return Err(format!(
                    "offering `{text}` mixes `any` with codes; use `any` alone"
                ));
            }
            if !KNOWN_OFFERING_CODES.contains(&code) {
                if KNOWN_OFFERING_CODES
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(code))
                {
                    return Err(format!(
                        "offering code `{code}`: codes are upper case (`{}`)",
                        code.to_ascii_uppercase()
                    ));
                }
                return Err(format!(
                    "unknown offering code `{code}` (expected `any` or one or more of {})",
                    KNOWN_OFFERING_CODES.join(", ")
                ));
            }
            if codes.iter().any(|c| c == code) {
                return Err(format!("offering code `{code}` repeated in `{text}`"));
            }
            codes.push(code.to_string());
        }
        Ok(Offerings::Codes(codes))
    }

    /// True if a tenant holding `tenant_offerings` may use the entitlement.
    /// Codes compare case-insensitively (`civ` in a config means `CIV`).
    pub fn permits(&self, tenant_offerings: &[String]) -> bool {
        match self {
            Offerings::Any => true,
            Offerings::Codes(codes) => codes.iter().any(|c| {
                tenant_offerings
                    .iter()
                    .any(|t| t.trim().eq_ignore_ascii_case(c))
            }),
        }
    }
}

impl fmt::Display for Offerings {
    /// The catalogue spelling: `any` or `CIC,CIV`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Offerings::Any => f.write_str("any"),
            Offerings::Codes(codes) => f.write_str(&codes.join(",")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    pub name: String,
    pub description: String,
    pub offerings: Offerings,
}

/// A set of known entitlements, keyed by exact (case-sensitive) name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, Entitlement>,
}

/// Result of checking names against a catalogue and a tenant's offerings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CatalogCheck {
    pub unknown: Vec<String>,
    pub unlicensed: Vec<String>,
}

impl CatalogCheck {
    /// True when every name was known and licensed.
    pub fn is_ok(&self) -> bool {
        self.unknown.is_empty() && self.unlicensed.is_empty()
    }
}

/// Accumulates entries and errors while a file is read, so every problem is
/// reported rather than only the first.
#[derive(Default)]
struct Builder {
    entries: BTreeMap<String, Entitlement>,
    /// Line each name was first defined on, for duplicate messages.
    lines: BTreeMap<String, usize>,
    errors: Vec<(usize, String)>,
}

impl Builder {
    /// Validate one row; `name_line` and `offering_line` are where the
    /// respective values sit (the same line in TSV, possibly not in TOML).
    fn add(
        &mut self,
        name: &str,
        name_line: usize,
        description: &str,
        offering: &str,
        offering_line: usize,
    ) {
        let name = name.trim();
        let mut ok = true;
        if name.is_empty() {
            self.errors
                .push((name_line, "empty entitlement name".to_string()));
            ok = false;
        } else if let Some(c) = name.chars().find(|c| c.is_whitespace() || c.is_control()) {
            self.errors.push((
                name_line,
                format!("entitlement name `{name}` contains {c:?}; names are single tokens"),
            ));
            ok = false;
        }
        let offerings = match Offerings::parse(offering) {
            Ok(o) => Some(o),
            Err(reason) => {
                let reason = if name.is_empty() {
                    reason
                } else {
                    format!("{name}: {reason}")
                };
                self.errors.push((offering_line, reason));
                None
            }
        };
        if !name.is_empty() {
            if let Some(first) = self.lines.get(name) {
                self.errors.push((
                    name_line,
                    format!("duplicate entitlement `{name}` (first defined on line {first})"),
                ));
                return;
            }
            self.lines.insert(name.to_string(), name_line);
        }
        if let (true, Some(offerings)) = (ok, offerings) {
            self.entries.insert(
                name.to_string(),
                Entitlement {
                    name: name.to_string(),
                    description: description.trim().to_string(),
                    offerings,
                },
            );
        }
    }

    fn finish(mut self) -> Result<Catalog, Vec<(usize, String)>> {
        if self.errors.is_empty() {
            Ok(Catalog {
                entries: self.entries,
            })
        } else {
            self.errors.sort_by_key(|(line, _)| *line);
            Err(self.errors)
        }
    }
}

/// The TOML form: `[[entitlements]]` tables.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    entitlements: Vec<TomlEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlEntry {
    name: toml::Spanned<String>,
    description: String,
    offering: toml::Spanned<String>,
}

/// `Catalog::from_tsv` or `Catalog::from_toml`, chosen by `Catalog::load`.
type Parser = fn(&str) -> Result<Catalog, Vec<(usize, String)>>;

/// 1-based line number of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

impl Catalog {
    /// Parse the TSV form: `#` comment lines and blank lines are skipped,
    /// the first other line must be the header `name<TAB>description<TAB>offering`,
    /// and every row after it has exactly 3 tab-separated fields. The
    /// description may be empty; the offering is `any` or comma-separated
    /// codes from [`KNOWN_OFFERING_CODES`]. Errors are `(1-based line, reason)`,
    /// all of them, in line order.
    pub fn from_tsv(text: &str) -> Result<Catalog, Vec<(usize, String)>> {
        let mut builder = Builder::default();
        let mut seen_header = false;
        let mut last_line = 0;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            last_line = line_no;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = raw.split('\t').collect();
            if !seen_header {
                seen_header = true;
                let is_header = fields.len() == TSV_HEADER.len()
                    && fields.iter().zip(TSV_HEADER).all(|(f, h)| f.trim() == h);
                if is_header {
                    continue;
                }
                builder.errors.push((
                    line_no,
                    "missing header row `name<TAB>description<TAB>offering` \
                     before the first entry"
                        .to_string(),
                ));
                // Fall through: the line is most likely a data row, and
                // checking it too keeps "report everything" true.
            }
            if fields.len() != 3 {
                builder.errors.push((
                    line_no,
                    format!(
                        "expected 3 tab-separated fields (name, description, offering), found {}",
                        fields.len()
                    ),
                ));
                continue;
            }
            builder.add(fields[0], line_no, fields[1], fields[2], line_no);
        }
        if !seen_header {
            builder.errors.push((
                last_line.max(1),
                "missing header row `name<TAB>description<TAB>offering` (no rows at all)"
                    .to_string(),
            ));
        }
        builder.finish()
    }

    /// Parse the TOML form: `[[entitlements]]` tables, each with string keys
    /// `name`, `description` and `offering` (`any` or comma-separated codes);
    /// any other key is an error. A syntax or shape error is reported alone,
    /// at its line (0 if the parser gave no position); value errors are all
    /// reported, like [`Catalog::from_tsv`].
    pub fn from_toml(text: &str) -> Result<Catalog, Vec<(usize, String)>> {
        let file: TomlFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            vec![(line, e.message().trim().to_string())]
        })?;
        let mut builder = Builder::default();
        for entry in &file.entitlements {
            let name_line = line_of(text, entry.name.span().start);
            let offering_line = line_of(text, entry.offering.span().start);
            builder.add(
                entry.name.get_ref(),
                name_line,
                &entry.description,
                entry.offering.get_ref(),
                offering_line,
            );
        }
        builder.finish()
    }

    /// Load a catalogue file, choosing the format by extension (`.tsv` or
    /// `.toml`, any case). Every error message names the path; parse errors
    /// come one per line as `path:LINE: reason`.
    pub fn load(path: &Path) -> Result<Catalog, String> {
        let shown = path.display();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse: Parser = match ext.as_deref() {
            Some("tsv") => Catalog::from_tsv,
            Some("toml") => Catalog::from_toml,
            _ => {
                return Err(format!(
                    "{shown}: unsupported entitlement catalogue format \
                     (expected a .tsv or .toml file)"
                ))
            }
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{shown}: cannot read entitlement catalogue: {e}"))?;
        parse(&text).map_err(|errors| {
            errors
                .iter()
                .map(|(line, reason)| format!("{shown}:{line}: {reason}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    pub fn get(&self, name: &str) -> Option<&Entitlement> {
        self.entries.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Entitlement> + '_ {
        self.entries.values()
    }

    /// Closest known name, for a "did you mean" hint. A name that differs
    /// only in ASCII case wins outright (a known name is returned as is);
    /// otherwise the candidate with the smallest case-insensitive edit
    /// distance (Levenshtein plus adjacent transpositions), provided it is at
    /// most `max(1, len/3)` for the `len` characters of `name`. Ties go to
    /// the smaller case-sensitive distance, then to name order. None if
    /// nothing is that close.
    pub fn suggest(&self, name: &str) -> Option<&str> {
        let name = name.trim();
        if name.is_empty() {
            return None;
        }
        if let Some((known, _)) = self.entries.get_key_value(name) {
            return Some(known.as_str());
        }
        let folded: Vec<char> = name.to_lowercase().chars().collect();
        let exact: Vec<char> = name.chars().collect();
        let limit = (exact.len() / 3).max(1);
        let mut best: Option<((usize, usize), &str)> = None;
        for known in self.entries.keys() {
            let known_folded: Vec<char> = known.to_lowercase().chars().collect();
            let folded_distance = edit_distance(&folded, &known_folded);
            if folded_distance > limit {
                continue;
            }
            let known_exact: Vec<char> = known.chars().collect();
            let key = (folded_distance, edit_distance(&exact, &known_exact));
            if best.is_none_or(|(best_key, _)| key < best_key) {
                best = Some((key, known.as_str()));
            }
        }
        best.map(|(_, known)| known)
    }

    /// Check requested names: each must be known, and licensed (offering
    /// `any`, or one of its codes among `tenant_offerings`). Returns the
    /// unknown and the unlicensed names, each in input order, without
    /// repeats.
    pub fn check<'a, I: IntoIterator<Item = &'a str>>(
        &self,
        names: I,
        tenant_offerings: &[String],
    ) -> CatalogCheck {
        let mut result = CatalogCheck::default();
        let mut seen: HashSet<&str> = HashSet::new();
        for name in names {
            if !seen.insert(name) {
                continue;
            }
            match self.entries.get(name) {
                None => result.unknown.push(name.to_string()),
                Some(entry) if !entry.offerings.permits(tenant_offerings) => {
                    result.unlicensed.push(name.to_string())
                }
                Some(_) => {}
            }
        }
        result
    }
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and swaps of adjacent characters each cost 1.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let width = b.len() + 1;
    // Three rolling rows: two back (for transpositions), previous, current.
    let mut before: Vec<usize> = vec![0; width];
    let mut prev: Vec<usize> = (0..width).collect();
    let mut cur: Vec<usize> = vec![0; width];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..width {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERIFY_TSV: &str = include_str!("../../config/catalogs/verify-entitlements.tsv");

    /// Entries in the union of the two IBM Verify pages (136 on the PUT page,
    /// 109 on the POST page, all 109 also on the PUT page).
    const VERIFY_UNION_SIZE: usize = 136;

    const GOOD_TSV: &str = "# a comment\n\
        \n\
        name\tdescription\toffering\n\
        manageAPIClients\tManage API clients\tany\n\
        readAPIClients\tRead API clients\tany\n\
        # comments may appear between rows\n\
        managePwdVault\tManage own password vault\tCIC, CIV\n\
        generateOTP\tGenerate OTP\tCIV\n\
        AnalyticsDataSyncToCloud\t\tCIA\n";

    fn offerings(codes: &[&str]) -> Vec<String> {
        codes.iter().map(|c| c.to_string()).collect()
    }

    fn lines(errors: &[(usize, String)]) -> Vec<usize> {
        errors.iter().map(|(l, _)| *l).collect()
    }

    #[test]
    fn good_tsv_parses() {
        let cat = Catalog::from_tsv(GOOD_TSV).unwrap();
        assert_eq!(cat.len(), 5);
        assert!(!cat.is_empty());
        assert!(cat.contains("manageAPIClients"));
        assert!(!cat.contains("manageapiclients"));
        let vault = cat.get("managePwdVault").unwrap();
        assert_eq!(vault.description, "Manage own password vault");
        assert_eq!(
            vault.offerings,
            Offerings::Codes(offerings(&["CIC", "CIV"]))
        );
        assert_eq!(vault.offerings.to_string(), "CIC,CIV");
        assert_eq!(
            cat.get("manageAPIClients").unwrap().offerings,
            Offerings::Any
        );
        assert_eq!(cat.get("AnalyticsDataSyncToCloud").unwrap().description, "");
        let names: Vec<&str> = cat.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names[0], "AnalyticsDataSyncToCloud");
    }

    #[test]
    fn crlf_and_header_only_are_fine() {
        let cat = Catalog::from_tsv("name\tdescription\toffering\r\nx\tX\tany\r\n").unwrap();
        assert_eq!(cat.get("x").unwrap().offerings, Offerings::Any);
        let empty = Catalog::from_tsv("# nothing yet\nname\tdescription\toffering\n").unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
    }

    #[test]
    fn wrong_field_count_is_reported_with_line() {
        let text = "name\tdescription\toffering\na\tA\tany\nb\tB\nc\tC\tany\textra\n";
        let errors = Catalog::from_tsv(text).unwrap_err();
        assert_eq!(lines(&errors), vec![3, 4]);
        assert!(errors[0].1.contains("found 2"), "{errors:?}");
        assert!(errors[1].1.contains("found 4"), "{errors:?}");
    }

    #[test]
    fn missing_header_is_an_error() {
        let errors = Catalog::from_tsv("# c\na\tA\tany\nb\tB\tany\n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, 2);
        assert!(errors[0].1.contains("missing header"));
        // Header with the wrong column names is not a header.
        let errors = Catalog::from_tsv("entitlement\tdescription\toffering\n").unwrap_err();
        assert_eq!(lines(&errors), vec![1, 1]);
        assert!(errors[0].1.contains("missing header"));
        // Nothing at all.
        let errors = Catalog::from_tsv("# only comments\n\n").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.contains("missing header"));
        assert!(Catalog::from_tsv("").is_err());
    }

    #[test]
    fn duplicate_is_reported_at_second_line() {
        let text = "name\tdescription\toffering\na\tA\tany\nb\tB\tany\na\tAgain\tCIC\n";
        let errors = Catalog::from_tsv(text).unwrap_err();
        assert_eq!(lines(&errors), vec![4]);
        assert!(errors[0].1.contains("duplicate entitlement `a`"));
        assert!(errors[0].1.contains("line 2"));
    }

    #[test]
    fn empty_or_spaced_name_is_an_error() {
        let text = "name\tdescription\toffering\n\tNo name\tany\n  \tBlank\tany\nmy name\tX\tany\n";
        let errors = Catalog::from_tsv(text).unwrap_err();
        assert_eq!(lines(&errors), vec![2, 3, 4]);
        assert!(errors[0].1.contains("empty entitlement name"));
        assert!(errors[2].1.contains("single tokens"));
    }

    #[test]
    fn bad_offerings_are_errors() {
        let text = "name\tdescription\toffering\n\
            a\tA\tCIX\n\
            b\tB\t\n\
            c\tC\tany,CIC\n\
            d\tD\tCIC,,CIV\n\
            e\tE\tCIV,CIV\n\
            f\tF\tANY\n\
            g\tG\tciv\n\
            ok\tOK\tCIG,ISC,CIA\n";
        let errors = Catalog::from_tsv(text).unwrap_err();
        assert_eq!(lines(&errors), vec![2, 3, 4, 5, 6, 7, 8], "{errors:?}");
        assert!(errors[0].1.contains("unknown offering code `CIX`"));
        assert!(errors[0].1.starts_with("a: "));
        assert!(errors[1].1.contains("empty offering"));
        assert!(errors[2].1.contains("mixes `any`"));
        assert!(errors[3].1.contains("empty code"));
        assert!(errors[4].1.contains("repeated"));
        assert!(errors[5].1.contains("lower case"), "{errors:?}");
        assert!(errors[6].1.contains("`CIV`"), "{errors:?}");
        for code in KNOWN_OFFERING_CODES {
            assert!(Offerings::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn all_errors_are_reported_in_line_order() {
        let text = "a\tA\tany\nb\tB\nb\tB\tnope\n\tX\tany\n";
        let errors = Catalog::from_tsv(text).unwrap_err();
        assert_eq!(lines(&errors), vec![1, 2, 3, 4], "{errors:?}");
    }

    #[test]
    fn toml_variant_parses() {
        let text = r#"
[[entitlements]]
name = "manageAPIClients"
description = "Manage API clients"
offering = "any"

[[entitlements]]
name = "readPwdVault"
description = "Read own password vault"
offering = "CIC, CIV"
"#;
        let cat = Catalog::from_toml(text).unwrap();
        assert_eq!(cat.len(), 2);
        assert_eq!(
            cat.get("manageAPIClients").unwrap().offerings,
            Offerings::Any
        );
        assert_eq!(
            cat.get("readPwdVault").unwrap().offerings,
            Offerings::Codes(offerings(&["CIC", "CIV"]))
        );
        assert!(Catalog::from_toml("").unwrap().is_empty());
    }

    #[test]
    fn toml_errors_carry_lines() {
        let unknown_key = "[[entitlements]]\nname = \"a\"\ndescription = \"A\"\noffering = \"any\"\nlicence = \"x\"\n";
        let errors = Catalog::from_toml(unknown_key).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, 5, "{errors:?}");
        assert!(errors[0].1.contains("licence"), "{errors:?}");

        let missing = "[[entitlements]]\nname = \"a\"\noffering = \"any\"\n";
        let errors = Catalog::from_toml(missing).unwrap_err();
        assert!(errors[0].1.contains("description"), "{errors:?}");

        let syntax = "[[entitlements]]\nname = \"a\n";
        let errors = Catalog::from_toml(syntax).unwrap_err();
        assert_eq!(errors[0].0, 2, "{errors:?}");

        let values = r#"[[entitlements]]
name = "a"
description = "A"
offering = "any"

[[entitlements]]
name = "b"
description = "B"
offering = "XYZ"

[[entitlements]]
name = "a"
description = "A again"
offering = "any"

[[entitlements]]
name = ""
description = ""
offering = "any"
"#;
        let errors = Catalog::from_toml(values).unwrap_err();
        assert_eq!(lines(&errors), vec![9, 12, 17], "{errors:?}");
        assert!(errors[0].1.contains("XYZ"));
        assert!(errors[1].1.contains("duplicate"));
        assert!(errors[2].1.contains("empty entitlement name"));
    }

    #[test]
    fn load_picks_format_by_extension() {
        let dir = std::env::temp_dir().join(format!("portcullis-catalog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tsv = dir.join("c.TSV");
        std::fs::write(&tsv, GOOD_TSV).unwrap();
        assert_eq!(Catalog::load(&tsv).unwrap().len(), 5);

        let toml_path = dir.join("c.toml");
        std::fs::write(
            &toml_path,
            "[[entitlements]]\nname = \"x\"\ndescription = \"X\"\noffering = \"CIG\"\n",
        )
        .unwrap();
        assert!(Catalog::load(&toml_path).unwrap().contains("x"));

        let bad = dir.join("bad.tsv");
        std::fs::write(&bad, "name\tdescription\toffering\nx\tX\tnope\n").unwrap();
        let err = Catalog::load(&bad).unwrap_err();
        assert!(err.starts_with(&format!("{}:2: ", bad.display())), "{err}");

        let json = dir.join("c.json");
        let err = Catalog::load(&json).unwrap_err();
        assert!(
            err.contains(&json.display().to_string()) && err.contains(".tsv"),
            "{err}"
        );

        let missing = dir.join("missing.tsv");
        let err = Catalog::load(&missing).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");

        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn suggest_finds_close_names() {
        let cat = Catalog::from_tsv(VERIFY_TSV).unwrap();
        assert_eq!(cat.suggest("manageAPIClient"), Some("manageAPIClients"));
        assert_eq!(cat.suggest("readapiclients"), Some("readAPIClients"));
        assert_eq!(cat.suggest("READAPICLIENTS"), Some("readAPIClients"));
        assert_eq!(cat.suggest("manageCerts"), Some("manageCerts"));
        // Swapped letters count once.
        assert_eq!(cat.suggest("mangaeCerts"), Some("manageCerts"));
        assert_eq!(cat.suggest("readCert"), Some("readCerts"));
        assert_eq!(cat.suggest("frobnicateEverything"), None);
        assert_eq!(cat.suggest(""), None);
        // Short names still allow one edit.
        let small = Catalog::from_tsv("name\tdescription\toffering\nab\tAB\tany\n").unwrap();
        assert_eq!(small.suggest("ac"), Some("ab"));
        assert_eq!(small.suggest("xy"), None);
    }

    #[test]
    fn suggest_prefers_case_only_difference() {
        let text = "name\tdescription\toffering\nreadOIDCGrants\tR\tany\nreadOidcGrant\tR2\tany\n";
        let cat = Catalog::from_tsv(text).unwrap();
        // One edit from `readOidcGrant`, but a case-only match for `readOIDCGrants`.
        assert_eq!(cat.suggest("readOidcGrants"), Some("readOIDCGrants"));
        assert_eq!(cat.suggest("READOIDCGRANT"), Some("readOidcGrant"));
        // Equal folded distance: the closer spelling, case included, wins.
        assert_eq!(cat.suggest("readOidcGrantz"), Some("readOidcGrant"));
        assert_eq!(cat.suggest("readOIDCGrantz"), Some("readOIDCGrants"));
    }

    #[test]
    fn edit_distance_basics() {
        let d = |a: &str, b: &str| {
            edit_distance(
                &a.chars().collect::<Vec<_>>(),
                &b.chars().collect::<Vec<_>>(),
            )
        };
        assert_eq!(d("", ""), 0);
        assert_eq!(d("abc", ""), 3);
        assert_eq!(d("", "abc"), 3);
        assert_eq!(d("kitten", "sitting"), 3);
        assert_eq!(d("ab", "ba"), 1);
        assert_eq!(d("abcd", "acbd"), 1);
    }

    #[test]
    fn check_reports_unknown_and_unlicensed() {
        let cat = Catalog::from_tsv(GOOD_TSV).unwrap();
        let names = [
            "generateOTP",
            "nope",
            "manageAPIClients",
            "managePwdVault",
            "nope",
            "generateOTP",
            "AnalyticsDataSyncToCloud",
            "other",
        ];
        let result = cat.check(names, &offerings(&["CIC"]));
        assert_eq!(
            result,
            CatalogCheck {
                unknown: vec!["nope".to_string(), "other".to_string()],
                unlicensed: vec![
                    "generateOTP".to_string(),
                    "AnalyticsDataSyncToCloud".to_string()
                ],
            }
        );
        assert!(!result.is_ok());

        // A tenant with CIV and CIA licenses everything known here.
        let result = cat.check(names, &offerings(&["civ", "CIA"]));
        assert!(result.unlicensed.is_empty(), "{result:?}");
        // No offerings at all: only `any` entries pass.
        let result = cat.check(["manageAPIClients", "managePwdVault"], &[]);
        assert_eq!(result.unlicensed, vec!["managePwdVault".to_string()]);
        assert!(cat.check(["manageAPIClients"], &[]).is_ok());
        assert!(cat.check(std::iter::empty(), &[]).is_ok());
    }

    #[test]
    fn shipped_verify_catalogue_loads() {
        let cat = match Catalog::from_tsv(VERIFY_TSV) {
            Ok(cat) => cat,
            Err(errors) => panic!("verify-entitlements.tsv: {errors:?}"),
        };
        assert_eq!(cat.len(), VERIFY_UNION_SIZE);
        for name in [
            "manageAPIClients",
            "readAPIClients",
            "readAPIClientsAndClientSecret",
            "manageCerts",
        ] {
            assert_eq!(
                cat.get(name).map(|e| &e.offerings),
                Some(&Offerings::Any),
                "{name}"
            );
        }
        assert_eq!(
            cat.get("manageCerts").unwrap().description,
            "Manage certificates"
        );
        assert_eq!(
            cat.get("managePwdVaultAnyUser").unwrap().offerings,
            Offerings::Codes(offerings(&["CIC", "CIV"]))
        );
        assert_eq!(
            cat.get("manageSubscriptions").unwrap().offerings,
            Offerings::Codes(offerings(&["ISC"]))
        );
        assert_eq!(
            cat.get("manageMFAMethods").unwrap().offerings,
            Offerings::Codes(offerings(&["CIC"]))
        );
        // Every offering code the catalogue uses is a known one, and every
        // known code is used (the code list was taken from these pages).
        let used: HashSet<String> = cat
            .iter()
            .filter_map(|e| match &e.offerings {
                Offerings::Codes(c) => Some(c.clone()),
                Offerings::Any => None,
            })
            .flatten()
            .collect();
        let known: HashSet<String> = KNOWN_OFFERING_CODES.iter().map(|c| c.to_string()).collect();
        assert_eq!(used, known);
        // Row count in the file equals entries (no row silently dropped).
        let rows = VERIFY_TSV
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert_eq!(rows, VERIFY_UNION_SIZE + 1, "data rows plus the header");
    }
}
