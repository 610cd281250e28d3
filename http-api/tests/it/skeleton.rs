//! The facade's frame: listener, error shape, request ids, OpenAPI.

use crate::common;

use common::error_code;

#[tokio::test]
async fn unknown_routes_answer_the_json_error_shape_with_a_request_id() {
    let s = common::start().await;
    let r = s.http.get(s.url("/v1/nothing-here")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (_, body) = common::status_json(r).await;
    assert_eq!(error_code(&body), "not_found");
    assert_eq!(body["error"]["request_id"], rid);
    s.stop().await;
}

#[tokio::test]
async fn a_callers_request_id_is_kept_and_echoed() {
    let s = common::start().await;
    let r = s
        .http
        .get(s.url("/v1/nothing-here"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let (_, body) = common::status_json(r).await;
    assert_eq!(body["error"]["request_id"], "abc-123");
    s.stop().await;
}

#[tokio::test]
async fn the_openapi_document_is_served() {
    let s = common::start().await;
    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    s.stop().await;
}

/// Every `$ref` in the document names a schema the document defines (clients generated from
/// it, and schemathesis, fail on a dangling reference).
#[tokio::test]
async fn every_schema_reference_in_the_openapi_document_resolves() {
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x.as_str()) {
                        ("$ref", Some(r)) => out.push(r.to_owned()),
                        _ => refs(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let s = common::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {r}"));
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling reference {r}"
        );
    }
    assert!(
        doc["paths"].as_object().unwrap().len() >= 25,
        "every route is documented"
    );
    s.stop().await;
}

/// Every operation of the document as (path, method, operation).
fn operations(doc: &serde_json::Value) -> Vec<(&str, &str, &serde_json::Value)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .iter()
                .map(move |(method, op)| (path.as_str(), method.as_str(), op))
        })
        .collect()
}

/// Query parameters read through the facade's own extractor were documented as path
/// parameters (utoipa's default location when it does not recognise the extractor): not
/// required, absent from the template, so the document was invalid and generated clients put
/// `limit` or `key` into the URL path. Every path parameter must be in its template and
/// required; every template variable must be a parameter.
#[tokio::test]
async fn path_parameters_are_exactly_the_template_variables() {
    let s = common::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    for (path, method, op) in operations(&doc) {
        let vars: Vec<&str> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|v| v.strip_suffix('}')))
            .collect();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let in_path: Vec<&str> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {path}: {p}");
                p["name"].as_str().unwrap()
            })
            .collect();
        for name in &in_path {
            assert!(
                vars.contains(name),
                "{method} {path}: {name} is documented in the path but is not in it"
            );
        }
        for v in &vars {
            assert!(
                in_path.contains(v),
                "{method} {path}: {v} is not documented"
            );
        }
    }
    s.stop().await;
}

/// The answers of the layers every route shares (token check, body extractors, load
/// shedding) were declared on no operation, so generated clients had no type for them.
#[tokio::test]
async fn every_operation_declares_the_answers_of_the_shared_layers() {
    let s = common::start().await;
    let (_, doc) = s.get("/openapi.json").await;
    for (path, method, op) in operations(&doc) {
        let codes = op["responses"].as_object().unwrap();
        let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
        let mut want = Vec::new();
        if secured {
            want.extend(["401", "403"]);
        }
        if op.get("requestBody").is_some() {
            want.extend(["400", "413", "415"]);
        }
        if path != "/healthz" && path != "/readyz" {
            want.push("429");
        }
        for code in want {
            assert!(codes.contains_key(code), "{method} {path} lacks {code}");
        }
    }
    assert!(
        operations(&doc)
            .iter()
            .any(|(_, _, op)| op["security"].as_array().is_some_and(|s| !s.is_empty())),
        "the document has secured routes to check"
    );
    let produce = &doc["paths"]["/v1/topics/{topic}/messages"]["post"]["responses"];
    assert!(
        produce["429"]["description"]
            .as_str()
            .unwrap()
            .contains("Store busy"),
        "a route's own description is kept"
    );
    s.stop().await;
}
