//! CustomResourceDefinitions, after Kubernetes' apiextensions validation:
//! names, group, scope, versions (exactly one stored), structural schemas
//! (a type on every node but where an extension stands for it, patterns
//! that compile), printer columns and scale paths.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
};

use super::FieldError;
use super::names;

type Errs = Vec<FieldError>;

const COLUMN_TYPES: &[&str] = &["integer", "number", "string", "boolean", "date"];

pub fn custom_resource_definition(
    crd: &mut CustomResourceDefinition,
    old: Option<&CustomResourceDefinition>,
    errs: &mut Errs,
) {
    let spec = &mut crd.spec;
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    if spec.group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else if let Some(why) = names::dns1123_subdomain(&spec.group) {
        errs.push(FieldError::invalid("spec.group", &spec.group, &why));
    } else if !spec.group.contains('.') {
        errs.push(FieldError::invalid("spec.group", &spec.group, "should be a domain with at least one dot"));
    }
    let n = &mut spec.names;
    if n.plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    } else if let Some(why) = names::dns1035_label(&n.plural) {
        errs.push(FieldError::invalid("spec.names.plural", &n.plural, &why));
    }
    if n.singular.as_deref().is_none_or(str::is_empty) {
        n.singular = Some(n.kind.to_lowercase());
    } else if let Some(why) = n.singular.as_deref().and_then(names::dns1035_label) {
        errs.push(FieldError::invalid("spec.names.singular", n.singular.as_deref().unwrap_or_default(), &why));
    }
    if n.kind.is_empty() {
        errs.push(FieldError::required("spec.names.kind"));
    } else if names::dns1035_label(&n.kind.to_lowercase()).is_some() {
        errs.push(FieldError::invalid(
            "spec.names.kind",
            &n.kind,
            "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
        ));
    }
    if n.list_kind.as_deref().is_none_or(str::is_empty) && !n.kind.is_empty() {
        n.list_kind = Some(format!("{}List", n.kind));
    }
    for (i, s) in n.short_names.iter().flatten().enumerate() {
        if let Some(why) = names::dns1035_label(s) {
            errs.push(FieldError::invalid(format!("spec.names.shortNames[{i}]"), s, &why));
        }
    }
    let want = format!("{}.{}", n.plural, spec.group);
    if !n.plural.is_empty() && !spec.group.is_empty() && name != want {
        errs.push(FieldError::invalid("metadata.name", name, "must be spec.names.plural+\".\"+spec.group"));
    }
    match spec.scope.as_str() {
        "Cluster" | "Namespaced" => {}
        "" => errs.push(FieldError::required("spec.scope")),
        other => errs.push(FieldError::not_supported("spec.scope", other, &["Cluster", "Namespaced"])),
    }
    if let Some(c) = spec.conversion.as_ref().map(|c| c.strategy.as_str()).filter(|s| *s != "None") {
        errs.push(
            FieldError::not_supported("spec.conversion.strategy", c, &["None"])
                .with_detail("conversion webhooks are not served (every version is converted by its apiVersion alone)"),
        );
    }
    if spec.versions.is_empty() {
        errs.push(FieldError::required("spec.versions"));
    } else if spec.versions.iter().filter(|v| v.storage).count() != 1 {
        errs.push(FieldError::invalid("spec.versions", "", "must have exactly one version marked as storage version"));
    }
    for (i, v) in spec.versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        version(&path, v, errs);
        if spec.versions[..i].iter().any(|o| o.name == v.name) {
            errs.push(FieldError::duplicate(format!("{path}.name"), &v.name));
        }
    }
    if let Some(old) = old {
        for (field, new, was) in [
            ("spec.group", &spec.group, &old.spec.group),
            ("spec.scope", &spec.scope, &old.spec.scope),
            ("spec.names.plural", &spec.names.plural, &old.spec.names.plural),
        ] {
            if new != was {
                errs.push(FieldError::invalid(field, new, "field is immutable"));
            }
        }
    }
}

fn version(path: &str, v: &CustomResourceDefinitionVersion, errs: &mut Errs) {
    if let Some(why) = names::dns1035_label(&v.name) {
        errs.push(FieldError::invalid(format!("{path}.name"), &v.name, &why));
    }
    match v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) {
        None => errs
            .push(FieldError::required(format!("{path}.schema.openAPIV3Schema")).with_detail("schemas are required")),
        Some(root) => {
            let at = format!("{path}.schema.openAPIV3Schema");
            if root.type_.as_deref() != Some("object") {
                errs.push(FieldError::invalid(
                    format!("{at}.type"),
                    root.type_.as_deref().unwrap_or_default(),
                    "must be object at the root",
                ));
            }
            structural(&at, root, errs);
        }
    }
    for (i, c) in v.additional_printer_columns.iter().flatten().enumerate() {
        let at = format!("{path}.additionalPrinterColumns[{i}]");
        if c.name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name")));
        }
        if !COLUMN_TYPES.contains(&c.type_.as_str()) {
            errs.push(FieldError::not_supported(format!("{at}.type"), &c.type_, COLUMN_TYPES));
        }
        if c.json_path.is_empty() {
            errs.push(FieldError::required(format!("{at}.jsonPath")));
        } else if let Err(e) = serde_json_path::JsonPath::parse(&format!("${}", c.json_path)) {
            errs.push(FieldError::invalid(
                format!("{at}.jsonPath"),
                &c.json_path,
                &format!("must be a valid JSON path: {e}"),
            ));
        }
    }
    if let Some(scale) = v.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
        let at = format!("{path}.subresources.scale");
        for (field, p, prefix) in [
            ("specReplicasPath", Some(&scale.spec_replicas_path), ".spec."),
            ("statusReplicasPath", Some(&scale.status_replicas_path), ".status."),
            ("labelSelectorPath", scale.label_selector_path.as_ref(), ".status."),
        ] {
            let Some(p) = p else { continue };
            // (A label selector may live under the spec too.)
            let under = p.starts_with(prefix) || (field == "labelSelectorPath" && p.starts_with(".spec."));
            if !under || p.ends_with('.') || p.contains("..") || p.contains('[') {
                let why = format!("should be a json path under {}", prefix.trim_end_matches('.'));
                errs.push(FieldError::invalid(format!("{at}.{field}"), p, &why));
            }
        }
    }
}

/// Kubernetes' structural rules, the ones objects rely on here: every
/// node has a type, unless it preserves unknown fields or is an
/// int-or-string; patterns compile.
fn structural(path: &str, s: &JSONSchemaProps, errs: &mut Errs) {
    let typeless_ok =
        s.x_kubernetes_int_or_string == Some(true) || s.x_kubernetes_preserve_unknown_fields == Some(true);
    if s.type_.as_deref().is_none_or(str::is_empty) && !typeless_ok {
        errs.push(
            FieldError::required(format!("{path}.type")).with_detail("must not be empty for specified object fields"),
        );
    }
    if let Some(p) = &s.pattern {
        if let Err(e) = regex::Regex::new(p) {
            // (The parser's message is a drawing of the pattern; its last
            // line says what is wrong.)
            let text = e.to_string();
            let why = text.lines().rev().find_map(|l| l.strip_prefix("error: ")).unwrap_or(text.as_str()).to_owned();
            errs.push(FieldError::invalid(
                format!("{path}.pattern"),
                p,
                &format!("must be a valid regular expression, but isn't: {why}"),
            ));
        }
    }
    if s.x_kubernetes_list_type.as_deref() == Some("map")
        && s.x_kubernetes_list_map_keys.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(
            FieldError::required(format!("{path}.x-kubernetes-list-map-keys"))
                .with_detail("must not be empty if x-kubernetes-list-type is map"),
        );
    }
    for (k, sub) in s.properties.iter().flatten() {
        structural(&format!("{path}.properties[{k}]"), sub, errs);
    }
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    };
    match &s.items {
        Some(JSONSchemaPropsOrArray::Schema(sub)) => structural(&format!("{path}.items"), sub, errs),
        Some(JSONSchemaPropsOrArray::Schemas(_)) => {
            errs.push(FieldError::forbidden(format!("{path}.items"), "items must be a schema object and not an array"))
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(sub)) = &s.additional_properties {
        structural(&format!("{path}.additionalProperties"), sub, errs);
    }
}
