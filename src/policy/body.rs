//! `[routes.body]`: rules on the request body of updates.
//!
//! A [`BodyPolicy`] is compiled once per config load from a route's
//! [`RawBody`]; [`BodyPolicy::evaluate`] then checks one complete, buffered
//! body. The body is parsed once (strictly: duplicate member names and deep
//! nesting are refused, see [`crate::auth::strict_json`]) and every rule
//! resolves its JSON pointers (RFC 6901) on that one tree. Rules run in a
//! fixed order and the first refusal wins:
//!
//! 0. `max_bytes` (defensive; the proxy already reads the body bounded)
//! 1. `json` — media type and strict JSON object
//! 2. `path_params` — body id equals the id in the path
//! 3. `deny` — fields that must be absent
//! 4. `only` — allow-list of top-level fields
//! 5. `require` — fields that must be present
//! 6. `field_requires` — writing a field needs extra entitlements
//! 7. `subset_of_caller` — no granting entitlements the caller lacks
//! 8. `catalog` — entitlements must exist and be licensed
//! 9. `enums` — closed sets of string values
//! 10. `cidrs` — IP address / CIDR lists
//!
//! Refusal messages name rules, pointers, field and entitlement names, never
//! secret values: a value from the body is quoted only when it is short and
//! not under a pointer that looks like a secret.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::strict_json::{self, StrictJsonError};
use crate::config::raw::RawBody;
use crate::config::validate::suggestion;
use crate::error::BodyRefusal;
use crate::policy::catalog::Catalog;
use crate::policy::ip::parse_entry;

/// Longest body value quoted back in a refusal message.
const MAX_QUOTED_VALUE: usize = 64;
/// Longest caller-supplied name (field, entitlement) echoed verbatim.
const MAX_ECHOED_NAME: usize = 128;
/// Unknown entitlement names that get a "did you mean" hint, at most.
const MAX_SUGGESTIONS: usize = 16;

/// A catalogue by name, with the tenant's licensed offerings, as configured
/// in `[catalogs.NAME]`.
#[derive(Clone)]
pub struct CatalogRef {
    pub catalog: Arc<Catalog>,
    pub offerings: Vec<String>,
}

impl fmt::Debug for CatalogRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogRef")
            .field("offerings", &self.offerings)
            .finish_non_exhaustive()
    }
}

/// A route's compiled body policy. Built once per config load.
#[derive(Debug, Clone)]
pub struct BodyPolicy {
    /// Largest body accepted on this route (413 beyond).
    pub max_bytes: u64,
    /// Whether the body must be a JSON object; every other rule needs it.
    pub json: bool,
    /// (pointer, path parameter name).
    path_params: Vec<(String, String)>,
    deny: Vec<String>,
    /// Allowed top-level names, sorted and deduplicated.
    only: Option<Vec<String>>,
    require: Vec<String>,
    /// (pointer, entitlements needed to write it).
    field_requires: Vec<(String, Vec<String>)>,
    subset_of_caller: Vec<String>,
    catalog: Vec<CatalogRule>,
    enums: Vec<EnumRule>,
    cidrs: Vec<CidrRule>,
}

/// `catalog = { "/entitlements" = "verify" }`, resolved.
#[derive(Clone)]
struct CatalogRule {
    pointer: String,
    name: String,
    catalog: Arc<Catalog>,
    offerings: Vec<String>,
}

impl fmt::Debug for CatalogRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatalogRule")
            .field("pointer", &self.pointer)
            .field("catalog", &self.name)
            .field("offerings", &self.offerings)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
struct EnumRule {
    pointer: String,
    allowed: Vec<String>,
    /// The pointer looks like it holds a secret: quote nothing.
    sensitive: bool,
}

#[derive(Debug, Clone)]
struct CidrRule {
    pointer: String,
    sensitive: bool,
}

/// One complete request body and the facts the rules compare it with.
#[derive(Debug, Clone, Copy)]
pub struct BodyRequest<'a> {
    pub content_type: Option<&'a str>,
    pub body: &'a [u8],
    /// Path parameters of the matched route (raw, as in the path).
    pub path_params: &'a [(&'a str, &'a str)],
    /// The caller's effective entitlements.
    pub entitlements: &'a [String],
}

// === impl BodyPolicy ===

impl BodyPolicy {
    /// Compile `[routes.body]`.
    ///
    /// `key` is the key path prefix for errors (e.g. `"routes[3].body"`);
    /// `max_body_bytes` is `server.max_body_bytes` (`max_bytes` defaults to
    /// it and must not exceed it); `path_param_names` are the route
    /// template's parameter names; `catalogs` resolves catalogue names.
    /// Returns every error found as (key path, reason).
    pub fn compile(
        raw: &RawBody,
        key: &str,
        max_body_bytes: u64,
        path_param_names: &[&str],
        catalogs: &HashMap<String, CatalogRef>,
    ) -> Result<BodyPolicy, Vec<(String, String)>> {
        let mut errs = Errors::default();

        let max_bytes = match raw.max_bytes {
            None => max_body_bytes,
            Some(n) if n < 1 => {
                errs.push(
                    format!("{key}.max_bytes"),
                    format!("must be at least 1, got {n}"),
                );
                max_body_bytes
            }
            Some(n) => {
                let n = n.unsigned_abs();
                if n > max_body_bytes {
                    errs.push(
                        format!("{key}.max_bytes"),
                        format!(
                            "{n} exceeds the limit of {max_body_bytes} bytes \
                             (server.max_body_bytes, and at most 65536 for a checked body, \
                             which is replayed from pingora's 64 KiB buffer)"
                        ),
                    );
                }
                n.min(max_body_bytes)
            }
        };

        if !raw.json {
            let json_rules = [
                ("path_params", !raw.path_params.is_empty()),
                ("deny", !raw.deny.is_empty()),
                ("subset_of_caller", !raw.subset_of_caller.is_empty()),
                ("catalog", !raw.catalog.is_empty()),
                ("enums", !raw.enums.is_empty()),
                ("cidrs", !raw.cidrs.is_empty()),
                ("only", raw.only.is_some()),
                ("require", !raw.require.is_empty()),
                ("field_requires", !raw.field_requires.is_empty()),
            ];
            for (rule, configured) in json_rules {
                if configured {
                    errs.push(
                        format!("{key}.{rule}"),
                        "needs json = true: the rule reads the body as JSON".to_string(),
                    );
                }
            }
        }

        let mut path_params = Vec::with_capacity(raw.path_params.len());
        for (pointer, param) in &raw.path_params {
            let path = format!("{key}.path_params.{pointer}");
            let ok = errs.pointer_ok(path.clone(), pointer);
            if !path_param_names.contains(&param.as_str()) {
                let hint = did_you_mean(param, path_param_names.iter().copied());
                let known = if path_param_names.is_empty() {
                    "the route's path has no parameters".to_string()
                } else {
                    format!("the route's path has {}", path_param_names.join(", "))
                };
                errs.push(
                    path,
                    format!("no path parameter named {param:?} ({known}){hint}"),
                );
            } else if ok {
                path_params.push((pointer.clone(), param.clone()));
            }
        }

        let mut deny = Vec::with_capacity(raw.deny.len());
        for (i, pointer) in raw.deny.iter().enumerate() {
            if errs.pointer_ok(format!("{key}.deny[{i}]"), pointer) {
                deny.push(pointer.clone());
            }
        }

        let only = match &raw.only {
            None => None,
            Some(names) if names.is_empty() => {
                errs.push(
                    format!("{key}.only"),
                    "must list at least one top-level field (an empty list refuses every body)"
                        .to_string(),
                );
                None
            }
            Some(names) => {
                for (i, name) in names.iter().enumerate() {
                    if name.contains('/') {
                        errs.push(
                            format!("{key}.only[{i}]"),
                            format!(
                                "{name:?} must be a top-level field name, not a pointer \
                                 (write \"clientSecret\", not \"/clientSecret\")"
                            ),
                        );
                    }
                }
                let mut sorted = names.clone();
                sorted.sort_unstable();
                sorted.dedup();
                Some(sorted)
            }
        };

        let mut require = Vec::with_capacity(raw.require.len());
        for (i, pointer) in raw.require.iter().enumerate() {
            let path = format!("{key}.require[{i}]");
            if !errs.pointer_ok(path.clone(), pointer) {
                continue;
            }
            if raw.deny.contains(pointer) {
                errs.push(
                    path,
                    format!("{pointer} is also in deny: no body could pass both rules"),
                );
                continue;
            }
            if let (Some(only), Some(top)) = (&only, top_level_name(pointer)) {
                if only
                    .binary_search_by(|n| n.as_str().cmp(top.as_str()))
                    .is_err()
                {
                    errs.push(
                        path,
                        format!(
                            "{pointer} is required but its top-level field {top:?} is not in \
                             only: no body could pass both rules"
                        ),
                    );
                    continue;
                }
            }
            require.push(pointer.clone());
        }

        let mut field_requires = Vec::with_capacity(raw.field_requires.len());
        for (pointer, needed) in &raw.field_requires {
            let path = format!("{key}.field_requires.{pointer}");
            let ok = errs.pointer_ok(path.clone(), pointer);
            if needed.is_empty() {
                errs.push(
                    path,
                    "must list at least one entitlement (remove the entry otherwise)".to_string(),
                );
            } else if needed.iter().any(|n| n.trim().is_empty()) {
                errs.push(path, "entitlement names must not be empty".to_string());
            } else if ok {
                field_requires.push((pointer.clone(), needed.clone()));
            }
        }

        let mut subset_of_caller = Vec::with_capacity(raw.subset_of_caller.len());
        for (i, pointer) in raw.subset_of_caller.iter().enumerate() {
            if errs.pointer_ok(format!("{key}.subset_of_caller[{i}]"), pointer) {
                subset_of_caller.push(pointer.clone());
            }
        }

        let mut catalog = Vec::with_capacity(raw.catalog.len());
        for (pointer, name) in &raw.catalog {
            let path = format!("{key}.catalog.{pointer}");
            let ok = errs.pointer_ok(path.clone(), pointer);
            match catalogs.get(name) {
                None => {
                    let hint = did_you_mean(name, catalogs.keys().map(String::as_str));
                    let known = if catalogs.is_empty() {
                        " (no [catalogs] are configured)".to_string()
                    } else {
                        String::new()
                    };
                    errs.push(path, format!("no catalogue named {name:?}{known}{hint}"));
                }
                Some(found) if ok => catalog.push(CatalogRule {
                    pointer: pointer.clone(),
                    name: name.clone(),
                    catalog: Arc::clone(&found.catalog),
                    offerings: found.offerings.clone(),
                }),
                Some(_) => {}
            }
        }

        let mut enums = Vec::with_capacity(raw.enums.len());
        for (pointer, allowed) in &raw.enums {
            let path = format!("{key}.enums.{pointer}");
            let ok = errs.pointer_ok(path.clone(), pointer);
            if allowed.is_empty() {
                errs.push(
                    path,
                    "must list at least one allowed value (absent and null are always allowed)"
                        .to_string(),
                );
            } else if ok {
                enums.push(EnumRule {
                    pointer: pointer.clone(),
                    allowed: allowed.clone(),
                    sensitive: is_sensitive(pointer),
                });
            }
        }

        let mut cidrs = Vec::with_capacity(raw.cidrs.len());
        for (i, pointer) in raw.cidrs.iter().enumerate() {
            if errs.pointer_ok(format!("{key}.cidrs[{i}]"), pointer) {
                cidrs.push(CidrRule {
                    pointer: pointer.clone(),
                    sensitive: is_sensitive(pointer),
                });
            }
        }

        if !errs.0.is_empty() {
            return Err(errs.0);
        }
        Ok(BodyPolicy {
            max_bytes,
            json: raw.json,
            path_params,
            deny,
            only,
            require,
            field_requires,
            subset_of_caller,
            catalog,
            enums,
            cidrs,
        })
    }

    /// Evaluate a complete body. Rules run in the order listed in the module
    /// documentation and the first refusal is returned.
    pub fn evaluate(&self, req: &BodyRequest<'_>) -> Result<(), BodyRefusal> {
        if u64::try_from(req.body.len()).map_or(true, |n| n > self.max_bytes) {
            return Err(refuse(
                413,
                "body_too_large",
                "max_bytes",
                "",
                format!("request body larger than {} bytes", self.max_bytes),
            ));
        }
        if !self.json {
            return Ok(());
        }

        // 1. json
        check_media_type(req.content_type)?;
        let doc = Value::Object(strict_json::parse_object(req.body).map_err(|e| {
            refuse(
                400,
                "invalid_json",
                "json",
                "",
                json_error_text(e, req.body),
            )
        })?);

        self.check_path_params(&doc, req.path_params)?;

        // 3. deny
        for pointer in &self.deny {
            if doc.pointer(pointer).is_some() {
                return Err(refuse(
                    400,
                    "field_denied",
                    "deny",
                    pointer,
                    format!("field {pointer} must not be sent on this route"),
                ));
            }
        }

        // 4. only
        if let (Some(only), Value::Object(map)) = (&self.only, &doc) {
            for name in map.keys() {
                if only.binary_search(name).is_err() {
                    let pointer = escape_segment(name);
                    return Err(refuse(
                        400,
                        "field_not_allowed",
                        "only",
                        &pointer,
                        format!(
                            "field /{} is not allowed on this route; allowed top-level fields: {}",
                            echo_name(&pointer[1..]),
                            only.join(", ")
                        ),
                    ));
                }
            }
        }

        // 5. require
        for pointer in &self.require {
            if doc.pointer(pointer).is_none() {
                return Err(refuse(
                    400,
                    "field_required",
                    "require",
                    pointer,
                    format!("field {pointer} is required on this route"),
                ));
            }
        }

        // 6. field_requires
        for (pointer, needed) in &self.field_requires {
            if doc.pointer(pointer).is_none() {
                continue;
            }
            let missing: Vec<&str> = needed
                .iter()
                .map(String::as_str)
                .filter(|n| !req.entitlements.iter().any(|h| h == n))
                .collect();
            if !missing.is_empty() {
                return Err(refuse(
                    403,
                    "field_requires_entitlement",
                    "field_requires",
                    pointer,
                    format!(
                        "writing {pointer} requires entitlements the caller lacks: {}",
                        missing.join(", ")
                    ),
                ));
            }
        }

        self.check_subset_of_caller(&doc, req.entitlements)?;
        self.check_catalog(&doc)?;
        self.check_enums(&doc)?;
        self.check_cidrs(&doc)
    }

    /// 2. `path_params`: a body naming the record must name the one in the path.
    fn check_path_params(&self, doc: &Value, params: &[(&str, &str)]) -> Result<(), BodyRefusal> {
        for (pointer, param) in &self.path_params {
            let Some(value) = doc.pointer(pointer) else {
                continue;
            };
            let mismatch = |why: &str| {
                refuse(
                    400,
                    "path_param_mismatch",
                    "path_params",
                    pointer,
                    format!("{pointer} {why} the path parameter {param}"),
                )
            };
            let Some(raw) = params.iter().find(|(n, _)| n == param).map(|(_, v)| *v) else {
                // Compile checked the name against the template; fail closed anyway.
                return Err(mismatch("cannot be compared with the missing"));
            };
            let rendered: Cow<'_, str> = match value {
                Value::String(s) => Cow::Borrowed(s),
                Value::Number(n) => Cow::Owned(n.to_string()),
                _ => return Err(mismatch("must be a string equal to")),
            };
            // Compared with what the upstream sees: the decoded segment (a
            // body id "ot%68er" must not pass for the path id "other").
            let equal = percent_encoding::percent_decode_str(raw)
                .decode_utf8()
                .is_ok_and(|decoded| decoded == rendered);
            if !equal {
                return Err(mismatch("must equal"));
            }
        }
        Ok(())
    }

    /// 7. `subset_of_caller`: no granting what the caller does not hold.
    fn check_subset_of_caller(&self, doc: &Value, held: &[String]) -> Result<(), BodyRefusal> {
        for pointer in &self.subset_of_caller {
            let Some(items) = string_array(doc, pointer, false).map_err(|()| {
                refuse(
                    400,
                    "invalid_json",
                    "subset_of_caller",
                    pointer,
                    format!("{pointer} must be an array of strings"),
                )
            })?
            else {
                continue;
            };
            // A set only pays off for large lists; callers hold tens of entitlements.
            let set: Option<HashSet<&str>> = (items.len() * held.len() > 1024)
                .then(|| held.iter().map(String::as_str).collect());
            let holds = |name: &str| match &set {
                Some(set) => set.contains(name),
                None => held.iter().any(|h| h == name),
            };
            let missing: BTreeSet<&str> = items.into_iter().filter(|n| !holds(n)).collect();
            if !missing.is_empty() {
                return Err(refuse(
                    403,
                    "privilege_escalation",
                    "subset_of_caller",
                    pointer,
                    format!(
                        "{pointer} grants entitlements the caller does not hold: {}",
                        join_names(missing.iter().copied())
                    ),
                ));
            }
        }
        Ok(())
    }

    /// 8. `catalog`: every entitlement exists and the tenant is licensed for it.
    fn check_catalog(&self, doc: &Value) -> Result<(), BodyRefusal> {
        for rule in &self.catalog {
            let pointer = rule.pointer.as_str();
            let Some(names) = string_array(doc, pointer, true).map_err(|()| {
                refuse(
                    400,
                    "invalid_json",
                    "catalog",
                    pointer,
                    format!("{pointer} must be a string or an array of strings"),
                )
            })?
            else {
                continue;
            };
            let check = rule.catalog.check(names, &rule.offerings);
            if check.unknown.is_empty() && check.unlicensed.is_empty() {
                continue;
            }
            let mut parts = Vec::with_capacity(2);
            let unknown: BTreeSet<&str> = check.unknown.iter().map(String::as_str).collect();
            if !unknown.is_empty() {
                // Suggestions cost an edit distance against every known name:
                // bound the work a hostile body can cause.
                let listed: Vec<String> = unknown
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let hint = (i < MAX_SUGGESTIONS && n.len() <= MAX_QUOTED_VALUE)
                            .then(|| rule.catalog.suggest(n))
                            .flatten();
                        match hint {
                            Some(s) => format!("{} (did you mean {s}?)", echo_name(n)),
                            None => echo_name(n).into_owned(),
                        }
                    })
                    .collect();
                parts.push(format!(
                    "unknown in catalogue {}: {}",
                    rule.name,
                    listed.join(", ")
                ));
            }
            let unlicensed: BTreeSet<&str> = check.unlicensed.iter().map(String::as_str).collect();
            if !unlicensed.is_empty() {
                parts.push(format!(
                    "not licensed for this tenant's offerings ({}): {}",
                    if rule.offerings.is_empty() {
                        "none".to_string()
                    } else {
                        rule.offerings.join(", ")
                    },
                    join_names(unlicensed.iter().copied())
                ));
            }
            return Err(refuse(
                400,
                "unknown_entitlement",
                "catalog",
                pointer,
                format!("{pointer} has invalid entitlements: {}", parts.join("; ")),
            ));
        }
        Ok(())
    }

    /// 9. `enums`: a closed set of strings; absent and null are allowed.
    fn check_enums(&self, doc: &Value) -> Result<(), BodyRefusal> {
        for rule in &self.enums {
            let value = match doc.pointer(&rule.pointer) {
                None | Some(Value::Null) => continue,
                Some(v) => v,
            };
            if let Value::String(s) = value {
                if rule.allowed.iter().any(|a| a == s) {
                    continue;
                }
            }
            let pointer = rule.pointer.as_str();
            let what = match value {
                Value::String(s) if !rule.sensitive && s.chars().count() <= MAX_QUOTED_VALUE => {
                    format!("{s:?} is not allowed")
                }
                Value::String(_) => "value not allowed".to_string(),
                _ => "must be a string or null".to_string(),
            };
            let message = if rule.sensitive {
                format!("{pointer}: {what}")
            } else {
                format!("{pointer}: {what}; allowed: {}", rule.allowed.join(", "))
            };
            return Err(refuse(400, "invalid_enum_value", "enums", pointer, message));
        }
        Ok(())
    }

    /// 10. `cidrs`: arrays of IP addresses or networks (no host bits set).
    fn check_cidrs(&self, doc: &Value) -> Result<(), BodyRefusal> {
        for rule in &self.cidrs {
            let pointer = rule.pointer.as_str();
            let items = match doc.pointer(pointer) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(items)) => items,
                Some(_) => {
                    return Err(refuse(
                        400,
                        "invalid_cidr",
                        "cidrs",
                        pointer,
                        format!("{pointer} must be an array of IP addresses or CIDR networks"),
                    ))
                }
            };
            for (i, item) in items.iter().enumerate() {
                let reason = match item {
                    Value::String(s) => match parse_entry(s) {
                        Ok(_) => continue,
                        Err(e) if !rule.sensitive && s.chars().count() <= MAX_QUOTED_VALUE => e,
                        Err(_) => "value not allowed: not an IP address or CIDR network \
                                   (without host bits)"
                            .to_string(),
                    },
                    _ => "must be a string (an IP address or CIDR network)".to_string(),
                };
                let at = format!("{pointer}/{i}");
                let message = format!("{at}: {reason}");
                return Err(refuse(400, "invalid_cidr", "cidrs", &at, message));
            }
        }
        Ok(())
    }
}

// === helpers ===

/// Compile errors as (key path, reason), all of them.
#[derive(Default)]
struct Errors(Vec<(String, String)>);

impl Errors {
    fn push(&mut self, path: String, reason: String) {
        self.0.push((path, reason));
    }

    /// Records an error unless `pointer` is a usable JSON pointer.
    fn pointer_ok(&mut self, path: String, pointer: &str) -> bool {
        match check_pointer(pointer) {
            Ok(()) => true,
            Err(reason) => {
                self.push(path, reason);
                false
            }
        }
    }
}

fn refuse(
    status: u16,
    code: &'static str,
    rule: &'static str,
    pointer: &str,
    message: String,
) -> BodyRefusal {
    BodyRefusal {
        code,
        rule,
        pointer: pointer.to_string(),
        status,
        message,
    }
}

/// `"; did you mean \"x\"?"` for a configured name: a candidate that
/// differs only in case, else the closest by edit distance, else `""`.
fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> String {
    match candidates.clone().find(|c| c.eq_ignore_ascii_case(name)) {
        Some(c) => format!("; did you mean {c:?}?"),
        None => suggestion(name, candidates),
    }
}

/// RFC 6901: empty, or `/`-separated segments where `~` only starts `~0` / `~1`.
/// The empty pointer (the whole body) is refused too: no rule means anything on it.
fn check_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() {
        return Err(
            "the empty JSON pointer names the whole body; name a field, e.g. \"/clientSecret\""
                .to_string(),
        );
    }
    if !pointer.starts_with('/') {
        return Err(format!(
            "{pointer:?} is not a JSON pointer: it must start with \"/\" (e.g. \"/{pointer}\")"
        ));
    }
    let mut bytes = pointer.bytes();
    while let Some(b) = bytes.next() {
        if b == b'~' && !matches!(bytes.next(), Some(b'0' | b'1')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer: \"~\" must be escaped as \"~0\" (and \"/\" \
                 inside a name as \"~1\")"
            ));
        }
    }
    Ok(())
}

/// The unescaped first segment of a (valid, non-empty) pointer.
fn top_level_name(pointer: &str) -> Option<String> {
    let first = pointer.strip_prefix('/')?.split('/').next()?;
    Some(first.replace("~1", "/").replace("~0", "~"))
}

/// `/` + the name with `~` and `/` escaped (RFC 6901 §3).
fn escape_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 1);
    out.push('/');
    for c in name.chars() {
        match c {
            '~' => out.push_str("~0"),
            '/' => out.push_str("~1"),
            c => out.push(c),
        }
    }
    out
}

/// Pointers that look like they hold secrets: quote no values from them.
fn is_sensitive(pointer: &str) -> bool {
    let lower = pointer.to_ascii_lowercase();
    lower.contains("secret") || lower.contains("password")
}

/// A caller-supplied name fit for a message: verbatim when short and
/// printable, otherwise escaped and shortened.
fn echo_name(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_ECHOED_NAME && name.bytes().all(|b| b.is_ascii_graphic()) {
        return Cow::Borrowed(name);
    }
    let mut cut: String = name.chars().take(MAX_ECHOED_NAME).collect();
    if cut.len() < name.len() {
        cut.push('…');
    }
    Cow::Owned(format!("{cut:?}"))
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(echo_name).collect::<Vec<_>>().join(", ")
}

/// The strings at `pointer`: `Ok(None)` when absent or null, `Err` when not
/// an array of strings (or, with `single`, one string).
fn string_array<'v>(
    doc: &'v Value,
    pointer: &str,
    single: bool,
) -> Result<Option<Vec<&'v str>>, ()> {
    match doc.pointer(pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if single => Ok(Some(vec![s.as_str()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().ok_or(()))
            .collect::<Result<Vec<_>, ()>>()
            .map(Some),
        Some(_) => Err(()),
    }
}

/// `application/json`, any case, with optional parameters; a `charset`
/// parameter must say UTF-8 (RFC 8259 §8.1).
fn check_media_type(content_type: Option<&str>) -> Result<(), BodyRefusal> {
    let unsupported = |why: &str| {
        refuse(
            415,
            "unsupported_media_type",
            "json",
            "",
            format!("Content-Type must be application/json{why}"),
        )
    };
    let Some(value) = content_type else {
        return Err(unsupported(" (none was sent)"));
    };
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or_default().trim();
    if !media.eq_ignore_ascii_case("application/json") {
        return Err(unsupported(""));
    }
    for param in parts {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let Some((name, val)) = param.split_once('=') else {
            return Err(unsupported(" (malformed media type parameter)"));
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let val = val.trim();
            let val = val
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(val);
            if !val.eq_ignore_ascii_case("utf-8") {
                return Err(unsupported(" with charset utf-8"));
            }
        }
    }
    Ok(())
}

fn json_error_text(e: StrictJsonError, body: &[u8]) -> String {
    match e {
        StrictJsonError::Duplicate => {
            "the body repeats a JSON member name in one object; each name may appear once"
                .to_string()
        }
        StrictJsonError::Malformed => {
            let first = body.iter().find(|b| !b.is_ascii_whitespace());
            match first {
                None => "the body is empty; expected a JSON object".to_string(),
                Some(b'{') => format!(
                    "the body is not a valid JSON object (syntax, UTF-8, or nesting deeper than \
                     {})",
                    strict_json::MAX_DEPTH
                ),
                Some(_) => "the body must be a JSON object".to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Zx9-TOPSECRET-client-secret-value-7Qp";

    /// The caller of most tests: may manage API clients and users.
    fn caller() -> Vec<String> {
        [
            "manageAPIClients",
            "readAPIClients",
            "manageUserGroups",
            "readUserGroups",
            "manageCerts",
        ]
        .map(String::from)
        .to_vec()
    }

    fn raw(toml_text: &str) -> RawBody {
        toml::from_str(toml_text).unwrap()
    }

    fn verify_catalogs() -> HashMap<String, CatalogRef> {
        let tsv = "# test catalogue\n\
                   name\tdescription\toffering\n\
                   manageAPIClients\tManage API clients\tany\n\
                   readAPIClients\tRead API clients\tany\n\
                   manageUserGroups\tManage users and groups\tany\n\
                   readUserGroups\tRead users and groups\tany\n\
                   manageCerts\tManage certificates\tany\n\
                   manageMFAMethods\tManage second-factor authentication method configuration\tCIC\n\
                   generateOTP\tGenerate OTP\tCIV\n\
                   manageSubscriptions\tManage subscriptions\tISC\n\
                   managePwdVault\tManage own password vault\tCIC, CIV\n";
        let catalog = Catalog::from_tsv(tsv).unwrap();
        HashMap::from([(
            "verify".to_string(),
            CatalogRef {
                catalog: Arc::new(catalog),
                offerings: vec!["CIC".to_string()],
            },
        )])
    }

    /// The body policy of IBM Verify's `PUT /v1.0/apiclients/{id}`.
    const VERIFY_UPDATE: &str = r#"
        max_bytes = 16384
        json = true
        path_params = { "/id" = "id" }
        deny = ["/clientId"]
        only = ["id", "clientName", "clientSecret", "entitlements", "enabled", "description",
                "overrideSettings", "additionalProperties", "ipFilterOp", "ipFilters",
                "jwkUri", "additionalConfig"]
        require = ["/clientSecret"]
        field_requires = { "/jwkUri" = ["manageAPIClients", "manageCerts"], "/additionalConfig/accessTokenType" = ["manageAPIClients"] }
        subset_of_caller = ["/entitlements"]
        catalog = { "/entitlements" = "verify" }
        enums = { "/ipFilterOp" = ["allow", "deny"], "/additionalConfig/accessTokenType" = ["default", "jwt"] }
        cidrs = ["/ipFilters"]
    "#;

    fn verify_policy() -> BodyPolicy {
        BodyPolicy::compile(
            &raw(VERIFY_UPDATE),
            "routes[2].body",
            65536,
            &["id"],
            &verify_catalogs(),
        )
        .unwrap()
    }

    /// A realistic update body that passes every rule of [`VERIFY_UPDATE`].
    fn verify_body() -> Value {
        serde_json::json!({
            "id": "4a3c2e1f-7b9d-4c1e-8f2a-0d6b5e9c3a71",
            "clientName": "ci-deployer",
            "clientSecret": SECRET,
            "entitlements": ["readAPIClients", "manageUserGroups"],
            "enabled": true,
            "description": "Deploys tenant configuration from CI",
            "overrideSettings": { "restrictScopes": false, "scopes": [] },
            "additionalProperties": {},
            "ipFilterOp": "allow",
            "ipFilters": ["10.0.0.0/8", "192.0.2.15", "2001:db8::/32"],
            "jwkUri": "https://ci.example.com/jwks",
            "additionalConfig": {
                "clientAuthMethod": "client_secret_post",
                "accessTokenType": "default"
            }
        })
    }

    const VERIFY_ID: &str = "4a3c2e1f-7b9d-4c1e-8f2a-0d6b5e9c3a71";

    fn eval_with(
        policy: &BodyPolicy,
        content_type: Option<&str>,
        body: &[u8],
        params: &[(&str, &str)],
        held: &[String],
    ) -> Result<(), BodyRefusal> {
        policy.evaluate(&BodyRequest {
            content_type,
            body,
            path_params: params,
            entitlements: held,
        })
    }

    fn eval(policy: &BodyPolicy, body: &Value) -> Result<(), BodyRefusal> {
        let bytes = serde_json::to_vec(body).unwrap();
        eval_with(
            policy,
            Some("application/json"),
            &bytes,
            &[("id", VERIFY_ID)],
            &caller(),
        )
    }

    /// `verify_body()` with `edit` applied to its top-level object.
    fn edited(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
        let mut body = verify_body();
        edit(body.as_object_mut().unwrap());
        body
    }

    #[track_caller]
    fn refused(
        result: Result<(), BodyRefusal>,
        status: u16,
        code: &str,
        rule: &str,
        pointer: &str,
    ) -> BodyRefusal {
        let r = result.expect_err("expected a refusal");
        assert_eq!(
            (r.status, r.code, r.rule, r.pointer.as_str()),
            (status, code, rule, pointer),
            "{r:?}"
        );
        assert!(
            !r.message.contains(SECRET),
            "message leaks the secret: {}",
            r.message
        );
        r
    }

    // --- whole bodies ---

    #[test]
    fn realistic_update_passes() {
        eval(&verify_policy(), &verify_body()).unwrap();
    }

    #[test]
    fn two_kib_body_passes() {
        let policy = verify_policy();
        let body = edited(|m| {
            m.insert(
                "description".into(),
                Value::String("Rotates tenant configuration nightly. ".repeat(50)),
            );
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        assert!(bytes.len() >= 2048, "{}", bytes.len());
        eval_with(
            &policy,
            Some("application/json"),
            &bytes,
            &[("id", VERIFY_ID)],
            &caller(),
        )
        .unwrap();
    }

    #[test]
    fn body_over_max_bytes_is_413() {
        let policy = verify_policy();
        let big = vec![b' '; 16385];
        refused(
            eval_with(&policy, Some("application/json"), &big, &[], &caller()),
            413,
            "body_too_large",
            "max_bytes",
            "",
        );
    }

    // --- 1. json ---

    #[test]
    fn media_type_with_utf8_charset_is_accepted() {
        let policy = verify_policy();
        let bytes = serde_json::to_vec(&verify_body()).unwrap();
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
            "application/json;",
        ] {
            eval_with(&policy, Some(ct), &bytes, &[("id", VERIFY_ID)], &caller())
                .unwrap_or_else(|e| panic!("{ct}: {e:?}"));
        }
    }

    #[test]
    fn other_media_types_are_415() {
        let policy = verify_policy();
        let bytes = serde_json::to_vec(&verify_body()).unwrap();
        for ct in [
            Some("text/plain"),
            Some("application/jsonx"),
            Some("application/json-patch+json"),
            Some("application/x-www-form-urlencoded"),
            Some("application/json; charset=iso-8859-1"),
            Some("application/json; charset"),
            Some(""),
            None,
        ] {
            refused(
                eval_with(&policy, ct, &bytes, &[("id", VERIFY_ID)], &caller()),
                415,
                "unsupported_media_type",
                "json",
                "",
            );
        }
    }

    #[test]
    fn duplicate_keys_are_invalid_json() {
        let policy = verify_policy();
        for body in [
            // The classic smuggle: a checker reading the first, IAM the last.
            r#"{"clientSecret":"a","entitlements":["readAPIClients"],"entitlements":["manageAdminGroup"]}"#,
            r#"{"clientSecret":"a","additionalConfig":{"accessTokenType":"default","accessTokenType":"jwt"}}"#,
            r#"{"clientSecret":"a","ipFilterOp":"allow","ipFilter\u004fp":"deny"}"#,
        ] {
            let r = refused(
                eval_with(
                    &policy,
                    Some("application/json"),
                    body.as_bytes(),
                    &[],
                    &caller(),
                ),
                400,
                "invalid_json",
                "json",
                "",
            );
            assert!(r.message.contains("repeats"), "{}", r.message);
        }
    }

    #[test]
    fn non_objects_and_garbage_are_invalid_json() {
        let policy = verify_policy();
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        for body in [
            "",
            "  ",
            "[]",
            "null",
            "\"x\"",
            "{",
            "{\"a\":1,}",
            "{\"a\":1} {}",
            &deep,
        ] {
            refused(
                eval_with(
                    &policy,
                    Some("application/json"),
                    body.as_bytes(),
                    &[],
                    &caller(),
                ),
                400,
                "invalid_json",
                "json",
                "",
            );
        }
    }

    #[test]
    fn json_false_parses_nothing() {
        let policy =
            BodyPolicy::compile(&raw("max_bytes = 10"), "b", 100, &[], &HashMap::new()).unwrap();
        assert!(!policy.json);
        eval_with(&policy, Some("text/plain"), b"not json", &[], &[]).unwrap();
        eval_with(&policy, None, b"", &[], &[]).unwrap();
        refused(
            eval_with(&policy, None, b"01234567890", &[], &[]),
            413,
            "body_too_large",
            "max_bytes",
            "",
        );
    }

    // --- 2. path_params ---

    #[test]
    fn path_param_must_match_body_id() {
        let policy = verify_policy();
        eval(&policy, &verify_body()).unwrap();
        // Absent: fine, the upstream takes the id from the path.
        eval(&policy, &edited(|m| drop(m.remove("id")))).unwrap();
        let other = edited(|m| {
            m.insert("id".into(), "0f0e0d0c-other-client".into());
        });
        let r = refused(
            eval(&policy, &other),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        assert!(
            r.message.contains("/id") && r.message.contains("id"),
            "{}",
            r.message
        );
        for v in [
            Value::Null,
            Value::Bool(true),
            serde_json::json!([VERIFY_ID]),
        ] {
            let body = edited(|m| {
                m.insert("id".into(), v);
            });
            refused(
                eval(&policy, &body),
                400,
                "path_param_mismatch",
                "path_params",
                "/id",
            );
        }
    }

    #[test]
    fn path_param_compares_the_decoded_segment_and_numbers() {
        let policy = BodyPolicy::compile(
            &raw(r#"json = true
                    path_params = { "/id" = "id" }"#),
            "b",
            1024,
            &["id"],
            &HashMap::new(),
        )
        .unwrap();
        let check = |body: &str, param: &str| {
            eval_with(
                &policy,
                Some("application/json"),
                body.as_bytes(),
                &[("id", param)],
                &[],
            )
        };
        check(r#"{"id":"app 1"}"#, "app%201").unwrap();
        // The upstream decodes the segment: the still-encoded text is another id.
        refused(
            check(r#"{"id":"app%201"}"#, "app%201"),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        refused(
            check(r#"{"id":"ot%68er"}"#, "other"),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        check(r#"{"id":42}"#, "42").unwrap();
        check(r#"{"id":"42"}"#, "42").unwrap();
        refused(
            check(r#"{"id":43}"#, "42"),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        refused(
            check(r#"{"id":"app 2"}"#, "app%201"),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        // Invalid UTF-8 once decoded: nothing matches.
        refused(
            check(r#"{"id":"x"}"#, "%ff"),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        // A missing parameter fails closed.
        refused(
            eval_with(
                &policy,
                Some("application/json"),
                br#"{"id":"a"}"#,
                &[],
                &[],
            ),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
    }

    // --- 3. deny ---

    #[test]
    fn denied_field_is_refused_even_when_null() {
        let policy = verify_policy();
        for v in [Value::String("new-client-id".into()), Value::Null] {
            let body = edited(|m| {
                m.insert("clientId".into(), v);
            });
            let r = refused(
                eval(&policy, &body),
                400,
                "field_denied",
                "deny",
                "/clientId",
            );
            assert!(r.message.contains("/clientId"), "{}", r.message);
        }
    }

    #[test]
    fn deny_with_escaped_pointer_segment() {
        let policy = BodyPolicy::compile(
            &raw(r#"json = true
                    deny = ["/additionalProperties/urn:ietf:params:oauth:a~1b", "/x~0y"]"#),
            "b",
            1024,
            &[],
            &HashMap::new(),
        )
        .unwrap();
        let run =
            |body: &str| eval_with(&policy, Some("application/json"), body.as_bytes(), &[], &[]);
        run(r#"{"additionalProperties":{"urn:ietf:params:oauth:a":1, "a~1b":2}}"#).unwrap();
        refused(
            run(r#"{"additionalProperties":{"urn:ietf:params:oauth:a/b":1}}"#),
            400,
            "field_denied",
            "deny",
            "/additionalProperties/urn:ietf:params:oauth:a~1b",
        );
        run(r#"{"x~0y":1}"#).unwrap();
        refused(run(r#"{"x~y":1}"#), 400, "field_denied", "deny", "/x~0y");
    }

    // --- 4. only ---

    #[test]
    fn only_refuses_other_top_level_fields() {
        let policy = verify_policy();
        let body = edited(|m| {
            m.insert(
                "grantTypes".into(),
                serde_json::json!(["client_credentials"]),
            );
        });
        let r = refused(
            eval(&policy, &body),
            400,
            "field_not_allowed",
            "only",
            "/grantTypes",
        );
        assert!(
            r.message.contains("clientName"),
            "lists the allowed fields: {}",
            r.message
        );
        let body = edited(|m| {
            m.insert("a/b~c".into(), Value::Null);
        });
        refused(
            eval(&policy, &body),
            400,
            "field_not_allowed",
            "only",
            "/a~1b~0c",
        );
        // Nested fields are not the business of `only`.
        let body = edited(|m| {
            m.insert(
                "overrideSettings".into(),
                serde_json::json!({"anything": 1}),
            );
        });
        eval(&policy, &body).unwrap();
    }

    // --- 5. require ---

    #[test]
    fn required_field_must_be_present() {
        let policy = verify_policy();
        let body = edited(|m| drop(m.remove("clientSecret")));
        let r = refused(
            eval(&policy, &body),
            400,
            "field_required",
            "require",
            "/clientSecret",
        );
        assert!(r.message.contains("/clientSecret"), "{}", r.message);
        // Present with null counts as present.
        let body = edited(|m| {
            m.insert("clientSecret".into(), Value::Null);
        });
        eval(&policy, &body).unwrap();
    }

    // --- 6. field_requires ---

    #[test]
    fn writing_a_field_needs_its_entitlements() {
        let policy = verify_policy();
        let held: Vec<String> = vec!["readAPIClients".into(), "manageUserGroups".into()];
        let bytes = |v: &Value| serde_json::to_vec(v).unwrap();
        let run = |v: &Value, held: &[String]| {
            eval_with(
                &policy,
                Some("application/json"),
                &bytes(v),
                &[("id", VERIFY_ID)],
                held,
            )
        };
        let no_extras = edited(|m| {
            m.remove("jwkUri");
            m.remove("additionalConfig");
        });
        run(&no_extras, &held).unwrap();
        let r = refused(
            run(&verify_body(), &held),
            403,
            "field_requires_entitlement",
            "field_requires",
            "/additionalConfig/accessTokenType",
        );
        assert!(r.message.contains("manageAPIClients"), "{}", r.message);
        let only_jwk = edited(|m| {
            m.remove("additionalConfig");
            m.insert("jwkUri".into(), Value::Null);
        });
        let r = refused(
            run(&only_jwk, &held),
            403,
            "field_requires_entitlement",
            "field_requires",
            "/jwkUri",
        );
        assert!(
            r.message.contains("manageAPIClients, manageCerts"),
            "names every missing entitlement: {}",
            r.message
        );
        // Holding one of two is not enough.
        let held_one = [held.clone(), vec!["manageAPIClients".into()]].concat();
        let r = refused(
            run(&only_jwk, &held_one),
            403,
            "field_requires_entitlement",
            "field_requires",
            "/jwkUri",
        );
        assert!(!r.message.contains("manageAPIClients"), "{}", r.message);
        run(&verify_body(), &caller()).unwrap();
    }

    // --- 7. subset_of_caller ---

    #[test]
    fn granting_entitlements_the_caller_lacks_is_escalation() {
        let policy = verify_policy();
        let body = edited(|m| {
            m.insert(
                "entitlements".into(),
                serde_json::json!([
                    "readAPIClients",
                    "manageUserGroups",
                    "manageMFAMethods",
                    "generateOTP",
                    "manageMFAMethods"
                ]),
            );
        });
        let r = refused(
            eval(&policy, &body),
            403,
            "privilege_escalation",
            "subset_of_caller",
            "/entitlements",
        );
        assert!(
            r.message.ends_with(": generateOTP, manageMFAMethods"),
            "sorted, deduplicated, every one: {}",
            r.message
        );
        // Exactly what the caller holds is fine; so is absent, null and empty.
        let same = edited(|m| {
            m.insert("entitlements".into(), caller().into());
        });
        eval(&policy, &same).unwrap();
        for v in [None, Some(Value::Null), Some(serde_json::json!([]))] {
            let body = edited(|m| match v {
                None => drop(m.remove("entitlements")),
                Some(v) => drop(m.insert("entitlements".into(), v)),
            });
            eval(&policy, &body).unwrap();
        }
    }

    #[test]
    fn subset_of_caller_needs_an_array_of_strings() {
        let policy = verify_policy();
        for v in [
            serde_json::json!("readAPIClients"),
            serde_json::json!(["readAPIClients", 7]),
            serde_json::json!({"0": "readAPIClients"}),
        ] {
            let body = edited(|m| {
                m.insert("entitlements".into(), v);
            });
            let r = refused(
                eval(&policy, &body),
                400,
                "invalid_json",
                "subset_of_caller",
                "/entitlements",
            );
            assert!(r.message.contains("array of strings"), "{}", r.message);
        }
    }

    #[test]
    fn subset_of_caller_scales_to_large_lists() {
        let policy = verify_policy();
        let mut held: Vec<String> = (0..100).map(|i| format!("ent{i}")).collect();
        held.extend(["manageAPIClients".to_string(), "manageCerts".to_string()]);
        let mut wanted: Vec<String> = held.clone();
        wanted.push("manageAdminGroup".into());
        let body = edited(|m| {
            m.insert("entitlements".into(), wanted.into());
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let r = refused(
            eval_with(
                &policy,
                Some("application/json"),
                &bytes,
                &[("id", VERIFY_ID)],
                &held,
            ),
            403,
            "privilege_escalation",
            "subset_of_caller",
            "/entitlements",
        );
        assert!(r.message.ends_with(": manageAdminGroup"), "{}", r.message);
    }

    // --- 8. catalog ---

    #[test]
    fn catalog_refuses_unknown_and_unlicensed_entitlements() {
        // Without subset_of_caller, so the catalogue rule is reached.
        let policy = BodyPolicy::compile(
            &raw(r#"json = true
                    catalog = { "/entitlements" = "verify" }"#),
            "b",
            4096,
            &[],
            &verify_catalogs(),
        )
        .unwrap();
        let run = |v: Value| {
            let bytes = serde_json::to_vec(&serde_json::json!({ "entitlements": v })).unwrap();
            eval_with(&policy, Some("application/json"), &bytes, &[], &caller())
        };
        run(serde_json::json!([
            "readAPIClients",
            "manageMFAMethods",
            "managePwdVault"
        ]))
        .unwrap();
        run(serde_json::json!("readAPIClients")).unwrap();
        run(serde_json::json!([])).unwrap();
        run(Value::Null).unwrap();
        let r = refused(
            run(serde_json::json!([
                "manageAPIClient",
                "readapiclients",
                "bogusThing",
                "generateOTP",
                "manageSubscriptions"
            ])),
            400,
            "unknown_entitlement",
            "catalog",
            "/entitlements",
        );
        let m = &r.message;
        assert!(
            m.contains("manageAPIClient (did you mean manageAPIClients?)"),
            "{m}"
        );
        assert!(
            m.contains("readapiclients (did you mean readAPIClients?)"),
            "{m}"
        );
        assert!(
            m.contains("bogusThing") && !m.contains("bogusThing (did"),
            "{m}"
        );
        let (unknown, unlicensed) = m.split_once("not licensed").unwrap();
        assert!(
            unknown.contains("bogusThing") && !unknown.contains("generateOTP"),
            "{m}"
        );
        assert!(
            unlicensed.contains("generateOTP, manageSubscriptions"),
            "{m}"
        );
        assert!(!unlicensed.contains("bogusThing"), "{m}");
        let r = refused(
            run(serde_json::json!("generateOTP")),
            400,
            "unknown_entitlement",
            "catalog",
            "/entitlements",
        );
        assert!(!r.message.contains("unknown in"), "{}", r.message);
        refused(
            run(serde_json::json!([1])),
            400,
            "invalid_json",
            "catalog",
            "/entitlements",
        );
        refused(
            run(serde_json::json!({"a": "b"})),
            400,
            "invalid_json",
            "catalog",
            "/entitlements",
        );
    }

    #[test]
    fn subset_of_caller_runs_before_catalog() {
        let policy = verify_policy();
        // Unknown and not held: the escalation is the refusal that counts.
        let body = edited(|m| {
            m.insert(
                "entitlements".into(),
                serde_json::json!(["manageAPIClient"]),
            );
        });
        refused(
            eval(&policy, &body),
            403,
            "privilege_escalation",
            "subset_of_caller",
            "/entitlements",
        );
        // Held (by a token) but unknown to the catalogue.
        let mut held = caller();
        held.push("manageAPIClient".into());
        let bytes = serde_json::to_vec(&body).unwrap();
        refused(
            eval_with(
                &policy,
                Some("application/json"),
                &bytes,
                &[("id", VERIFY_ID)],
                &held,
            ),
            400,
            "unknown_entitlement",
            "catalog",
            "/entitlements",
        );
    }

    // --- 9. enums ---

    #[test]
    fn enum_values_are_a_closed_set() {
        let policy = verify_policy();
        for v in [Value::Null, "deny".into()] {
            let body = edited(|m| {
                m.insert("ipFilterOp".into(), v);
            });
            eval(&policy, &body).unwrap();
        }
        eval(&policy, &edited(|m| drop(m.remove("ipFilterOp")))).unwrap();
        let body = edited(|m| {
            m.insert("ipFilterOp".into(), "ALLOW".into());
        });
        let r = refused(
            eval(&policy, &body),
            400,
            "invalid_enum_value",
            "enums",
            "/ipFilterOp",
        );
        assert!(
            r.message.contains("\"ALLOW\"") && r.message.contains("allow, deny"),
            "{}",
            r.message
        );
        let long = "x".repeat(65);
        let body = edited(|m| {
            m.insert("ipFilterOp".into(), long.clone().into());
        });
        let r = refused(
            eval(&policy, &body),
            400,
            "invalid_enum_value",
            "enums",
            "/ipFilterOp",
        );
        assert!(
            !r.message.contains(&long) && r.message.contains("value not allowed"),
            "{}",
            r.message
        );
        for v in [
            Value::Bool(true),
            serde_json::json!(["allow"]),
            serde_json::json!(1),
        ] {
            let body = edited(|m| {
                m.insert("ipFilterOp".into(), v);
            });
            refused(
                eval(&policy, &body),
                400,
                "invalid_enum_value",
                "enums",
                "/ipFilterOp",
            );
        }
        let body = edited(|m| {
            m.insert(
                "additionalConfig".into(),
                serde_json::json!({"accessTokenType": "opaque"}),
            );
        });
        refused(
            eval(&policy, &body),
            400,
            "invalid_enum_value",
            "enums",
            "/additionalConfig/accessTokenType",
        );
    }

    #[test]
    fn vmware_nested_enums() {
        let policy = BodyPolicy::compile(
            &raw(r#"json = true
                    path_params = { "/id" = "id" }
                    enums = { "/type" = ["Embedded", "Microsoft ADFS", "Microsoft Entra ID", "Okta"],
                              "/ldap/type" = ["OpenLdap", "ActiveDirectory"],
                              "/fedIdpSpec/directory/federatedIdpSourceType" = ["OKTA", "MICROSOFT_ENTRA_ID", "PING_FEDERATE"] }
                    cidrs = ["/fedIdpSpec/directory/trustedNetworks"]"#),
            "routes[5].body",
            65536,
            &["id"],
            &HashMap::new(),
        )
        .unwrap();
        let body = |ldap_type: &str, source: &str| {
            serde_json::to_vec(&serde_json::json!({
                "name": "corp-idp",
                "type": "Okta",
                "ldap": {
                    "type": ldap_type,
                    "domainName": "corp.example.com",
                    "username": "cn=svc,dc=corp",
                    "password": SECRET,
                    "sourceDetails": { "usersBaseDn": "ou=users,dc=corp", "serverEndpoints": ["ldaps://dc1.corp:636"] }
                },
                "fedIdpSpec": {
                    "name": "okta",
                    "directory": { "directoryId": "d-1", "name": "corp", "domains": ["corp.example.com"], "federatedIdpSourceType": source },
                    "oidcSpec": { "clientId": "0oa1", "clientSecret": SECRET, "discoveryEndpoint": "https://corp.okta.com/.well-known/openid-configuration" },
                    "syncClientTokenTTL": 3600
                }
            }))
            .unwrap()
        };
        let run = |b: Vec<u8>| {
            eval_with(
                &policy,
                Some("application/json"),
                &b,
                &[("id", "idp-7")],
                &[],
            )
        };
        run(body("ActiveDirectory", "OKTA")).unwrap();
        refused(
            run(body("Samba", "OKTA")),
            400,
            "invalid_enum_value",
            "enums",
            "/ldap/type",
        );
        refused(
            run(body("OpenLdap", "AUTH0")),
            400,
            "invalid_enum_value",
            "enums",
            "/fedIdpSpec/directory/federatedIdpSourceType",
        );
    }

    #[test]
    fn values_under_secret_pointers_are_never_quoted() {
        let policy = BodyPolicy::compile(
            &raw(r#"json = true
                    enums = { "/ldap/Password" = ["not-a-real-password"], "/oidc/clientSecret" = ["x"] }
                    cidrs = ["/secretNets"]"#),
            "b",
            4096,
            &[],
            &HashMap::new(),
        )
        .unwrap();
        let run = |v: Value| {
            let b = serde_json::to_vec(&v).unwrap();
            eval_with(&policy, Some("application/json"), &b, &[], &[])
        };
        let r = refused(
            run(serde_json::json!({"ldap": {"Password": "hunter2"}})),
            400,
            "invalid_enum_value",
            "enums",
            "/ldap/Password",
        );
        assert!(
            !r.message.contains("hunter2") && !r.message.contains("not-a-real-password"),
            "{}",
            r.message
        );
        let r = refused(
            run(serde_json::json!({"oidc": {"clientSecret": SECRET}})),
            400,
            "invalid_enum_value",
            "enums",
            "/oidc/clientSecret",
        );
        assert!(r.message.contains("value not allowed"), "{}", r.message);
        let r = refused(
            run(serde_json::json!({"secretNets": ["10.0.0.0/8", "hunter2"]})),
            400,
            "invalid_cidr",
            "cidrs",
            "/secretNets/1",
        );
        assert!(!r.message.contains("hunter2"), "{}", r.message);
    }

    // --- 10. cidrs ---

    #[test]
    fn ip_filters_must_be_addresses_or_networks() {
        let policy = verify_policy();
        let with = |v: Value| {
            edited(|m| {
                m.insert("ipFilters".into(), v);
            })
        };
        for ok in [
            serde_json::json!([]),
            Value::Null,
            serde_json::json!([
                "0.0.0.0/0",
                "::/0",
                "203.0.113.7",
                "fd00::1",
                "10.20.0.0/16"
            ]),
        ] {
            eval(&policy, &with(ok)).unwrap();
        }
        eval(&policy, &edited(|m| drop(m.remove("ipFilters")))).unwrap();
        let r = refused(
            eval(
                &policy,
                &with(serde_json::json!([
                    "10.0.0.0/8",
                    "192.0.2.0/24",
                    "10.1.2.3/8"
                ])),
            ),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters/2",
        );
        assert!(
            r.message.contains("10.1.2.3/8") && r.message.contains("10.0.0.0/8"),
            "{}",
            r.message
        );
        refused(
            eval(&policy, &with(serde_json::json!(["localhost"]))),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters/0",
        );
        refused(
            eval(&policy, &with(serde_json::json!(["10.0.0.0/33"]))),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters/0",
        );
        refused(
            eval(&policy, &with(serde_json::json!(["::1", 10]))),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters/1",
        );
        refused(
            eval(&policy, &with(serde_json::json!("10.0.0.0/8"))),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters",
        );
        let long = format!("10.0.0.0/8{}", " x".repeat(40));
        let r = refused(
            eval(&policy, &with(serde_json::json!([long.clone()]))),
            400,
            "invalid_cidr",
            "cidrs",
            "/ipFilters/0",
        );
        assert!(!r.message.contains(&long), "{}", r.message);
    }

    // --- order ---

    #[test]
    fn first_rule_in_order_wins() {
        let policy = verify_policy();
        // Breaks deny, only, require, enums and cidrs: deny comes first.
        let body = edited(|m| {
            m.insert("clientId".into(), "x".into());
            m.insert("grantTypes".into(), Value::Null);
            m.remove("clientSecret");
            m.insert("ipFilterOp".into(), "maybe".into());
            m.insert("ipFilters".into(), serde_json::json!(["nope"]));
        });
        refused(
            eval(&policy, &body),
            400,
            "field_denied",
            "deny",
            "/clientId",
        );
        let body = edited(|m| {
            m.insert("id".into(), "other".into());
            m.insert("clientId".into(), "x".into());
        });
        refused(
            eval(&policy, &body),
            400,
            "path_param_mismatch",
            "path_params",
            "/id",
        );
        let body = edited(|m| {
            m.insert("grantTypes".into(), Value::Null);
            m.remove("clientSecret");
        });
        refused(
            eval(&policy, &body),
            400,
            "field_not_allowed",
            "only",
            "/grantTypes",
        );
        let body = edited(|m| {
            m.insert("ipFilterOp".into(), "maybe".into());
            m.insert("ipFilters".into(), serde_json::json!(["nope"]));
        });
        refused(
            eval(&policy, &body),
            400,
            "invalid_enum_value",
            "enums",
            "/ipFilterOp",
        );
        // Media type before parsing: garbage with a wrong type is 415.
        refused(
            eval_with(&policy, Some("text/plain"), b"{", &[], &[]),
            415,
            "unsupported_media_type",
            "json",
            "",
        );
    }

    // --- compile ---

    fn compile_errors(
        toml_text: &str,
        max_body_bytes: u64,
        params: &[&str],
    ) -> Vec<(String, String)> {
        BodyPolicy::compile(
            &raw(toml_text),
            "routes[3].body",
            max_body_bytes,
            params,
            &verify_catalogs(),
        )
        .unwrap_err()
    }

    fn has_error(errs: &[(String, String)], key: &str, needle: &str) -> bool {
        errs.iter().any(|(k, r)| k == key && r.contains(needle))
    }

    #[test]
    fn compile_defaults_and_limits() {
        let p = BodyPolicy::compile(&raw("json = true"), "b", 1000, &[], &HashMap::new()).unwrap();
        assert_eq!(p.max_bytes, 1000);
        let p =
            BodyPolicy::compile(&raw("max_bytes = 1000"), "b", 1000, &[], &HashMap::new()).unwrap();
        assert_eq!(p.max_bytes, 1000);
        let errs = compile_errors("max_bytes = 1001", 1000, &[]);
        assert!(
            has_error(&errs, "routes[3].body.max_bytes", "server.max_body_bytes"),
            "{errs:?}"
        );
        for bad in ["max_bytes = 0", "max_bytes = -5"] {
            let errs = compile_errors(bad, 1000, &[]);
            assert!(
                has_error(&errs, "routes[3].body.max_bytes", "at least 1"),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn compile_refuses_bad_pointers() {
        let errs = compile_errors(
            r#"json = true
               deny = ["clientSecret", "/a~2b", "/trailing~", ""]
               enums = { "ipFilterOp" = ["allow"] }
               cidrs = ["/ok", "/bad~"]
               field_requires = { "/x~" = ["manageAPIClients"] }
               subset_of_caller = ["entitlements"]
               catalog = { "entitlements" = "verify" }
               path_params = { "id" = "id" }
               require = ["/~"]"#,
            1024,
            &["id"],
        );
        for key in [
            "routes[3].body.deny[0]",
            "routes[3].body.deny[1]",
            "routes[3].body.deny[2]",
            "routes[3].body.deny[3]",
            "routes[3].body.enums.ipFilterOp",
            "routes[3].body.cidrs[1]",
            "routes[3].body.field_requires./x~",
            "routes[3].body.subset_of_caller[0]",
            "routes[3].body.catalog.entitlements",
            "routes[3].body.path_params.id",
            "routes[3].body.require[0]",
        ] {
            assert!(
                errs.iter().any(|(k, _)| k == key),
                "no error for {key}: {errs:?}"
            );
        }
        assert_eq!(errs.len(), 11, "{errs:?}");
        assert!(
            has_error(&errs, "routes[3].body.deny[0]", "\"/clientSecret\""),
            "{errs:?}"
        );
        assert!(has_error(&errs, "routes[3].body.deny[1]", "~0"), "{errs:?}");
    }

    #[test]
    fn compile_refuses_unknown_catalogue_with_suggestion() {
        let errs = compile_errors(
            r#"json = true
               catalog = { "/entitlements" = "verfy" }"#,
            1024,
            &[],
        );
        assert!(
            has_error(
                &errs,
                "routes[3].body.catalog./entitlements",
                "did you mean \"verify\"?"
            ),
            "{errs:?}"
        );
        let errs = BodyPolicy::compile(
            &raw(r#"json = true
                    catalog = { "/entitlements" = "verify" }"#),
            "b",
            1024,
            &[],
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(
            has_error(&errs, "b.catalog./entitlements", "no [catalogs]"),
            "{errs:?}"
        );
    }

    #[test]
    fn compile_refuses_unknown_path_param() {
        let errs = compile_errors(
            r#"json = true
               path_params = { "/id" = "ID", "/clientId" = "client" }"#,
            1024,
            &["id"],
        );
        assert!(
            has_error(
                &errs,
                "routes[3].body.path_params./id",
                "did you mean \"id\"?"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "routes[3].body.path_params./clientId", "\"client\""),
            "{errs:?}"
        );
        let errs = compile_errors(
            r#"json = true
               path_params = { "/id" = "id" }"#,
            1024,
            &[],
        );
        assert!(
            has_error(&errs, "routes[3].body.path_params./id", "no parameters"),
            "{errs:?}"
        );
    }

    #[test]
    fn compile_refuses_json_rules_without_json() {
        let errs = compile_errors(
            r#"deny = ["/clientSecret"]
               only = ["id"]
               enums = { "/ipFilterOp" = ["allow"] }"#,
            1024,
            &[],
        );
        for rule in ["deny", "only", "enums"] {
            assert!(
                has_error(
                    &errs,
                    &format!("routes[3].body.{rule}"),
                    "needs json = true"
                ),
                "{rule}: {errs:?}"
            );
        }
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn compile_refuses_empty_and_contradictory_lists() {
        let errs = compile_errors(
            r#"json = true
               only = []
               enums = { "/ipFilterOp" = [] }
               field_requires = { "/jwkUri" = [], "/enabled" = [""] }
               deny = ["/clientSecret"]
               require = ["/clientSecret"]"#,
            1024,
            &[],
        );
        assert!(
            has_error(&errs, "routes[3].body.only", "at least one"),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "routes[3].body.enums./ipFilterOp", "at least one"),
            "{errs:?}"
        );
        assert!(
            has_error(
                &errs,
                "routes[3].body.field_requires./jwkUri",
                "at least one"
            ),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "routes[3].body.field_requires./enabled", "empty"),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "routes[3].body.require[0]", "also in deny"),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 5, "{errs:?}");

        let errs = compile_errors(
            r#"json = true
               only = ["clientName", "/clientSecret"]
               require = ["/clientSecret", "/clientName"]"#,
            1024,
            &[],
        );
        assert!(
            has_error(&errs, "routes[3].body.only[1]", "top-level field name"),
            "{errs:?}"
        );
        assert!(
            has_error(&errs, "routes[3].body.require[0]", "not in only"),
            "{errs:?}"
        );
        assert_eq!(errs.len(), 2, "{errs:?}");
    }

    #[test]
    fn compiled_policy_debug_omits_catalogue_contents() {
        let text = format!("{:?}", verify_policy());
        assert!(
            text.contains("verify") && !text.contains("generateOTP"),
            "{text}"
        );
    }
}
