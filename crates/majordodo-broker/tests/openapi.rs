//! `/openapi.json` against the code: it is served over real HTTP without credentials and is an
//! OpenAPI 3.1 document; every path it names is routed with the methods it names; every action
//! and view the request parser knows is described; every field it documents for an action is
//! one the real parser accepts for it, and every field it documents for other actions is one
//! the parser refuses for it. So a field added to, moved between or removed from the parser
//! without the description fails here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use majordodo_broker::http::auth::token_digest;
use majordodo_broker::http::{self, HttpConfig, UserConfig, UserRole};
use majordodo_broker::{Broker, BrokerConfig, SystemClock};
use majordodo_core::DefaultGroupMapper;
use majordodo_log::{CommitLog, MemoryLog, MemoryStore};
use majordodo_proto::http::request::SUPPORTED_ACTIONS;
use majordodo_proto::http::view::SUPPORTED_VIEWS;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "mdt_openapi-admin";

async fn start() -> (Broker, CancellationToken, String) {
    let stop = CancellationToken::new();
    let broker = Broker::start(
        BrokerConfig::default(),
        Arc::new(MemoryLog::open(&MemoryStore::new())) as Arc<dyn CommitLog>,
        None,
        Arc::new(DefaultGroupMapper),
        Arc::new(SystemClock),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap();
    let settings = HttpConfig {
        users: vec![UserConfig {
            name: "admin".into(),
            role: UserRole::Admin,
            password_hash: None,
            token_sha256: Some(token_digest(TOKEN)),
        }],
        ..HttpConfig::default()
    }
    .validate()
    .unwrap();
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", socket.local_addr().unwrap());
    tokio::spawn(http::serve(
        socket,
        broker.handle(),
        settings,
        stop.clone().cancelled_owned(),
    ));
    (broker, stop, base)
}

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answered in time")
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

/// POSTs `body` as the admin; returns the status and the error's field and text (if any).
async fn post(base: &str, body: &Value) -> (u16, String, String) {
    let (status, text) = send(
        reqwest::Client::new()
            .post(format!("{base}/majordodo"))
            .bearer_auth(TOKEN)
            .json(body),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let field = v["field"].as_str().unwrap_or("").to_owned();
    let error = v["error"].as_str().unwrap_or("").to_owned();
    (status, field, error)
}

/// Whether an answer is the parser refusing `field` as unknown to the action.
fn refused_as_unknown(field: &str, answer: &(u16, String, String)) -> bool {
    let (status, f, error) = answer;
    *status == 400
        && f == field
        && (error.contains("is not a field of") || error.contains("must be set on each element"))
}

/// The properties (besides `action`) of a schema object.
fn properties(schema: &Value) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .filter(|k| *k != "action")
        .cloned()
        .collect()
}

#[tokio::test]
async fn the_openapi_description_matches_the_routes_and_the_request_parser() {
    // Goal: see the module documentation.
    let (broker, stop, base) = start().await;
    let (status, text) = send(reqwest::Client::new().get(format!("{base}/openapi.json"))).await;
    assert_eq!(status, 200, "{text}");
    let doc: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    // It reads as an OpenAPI 3.1 document, and every operation's request body and schema
    // references resolve.
    let spec = oas3::from_json(&text).expect("an OpenAPI 3.1 document");
    spec.validate_version().expect("a 3.1 version");
    for (path, method, op) in spec.operations() {
        if let Some(body) = &op.request_body {
            body.resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path}: request body: {e}"));
        }
        for p in &op.parameters {
            p.resolve(&spec)
                .unwrap_or_else(|e| panic!("{method} {path}: parameter: {e}"));
        }
    }
    for (name, schema) in &spec.components.as_ref().expect("components").schemas {
        schema
            .resolve(&spec)
            .unwrap_or_else(|e| panic!("schema {name}: {e}"));
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();

    // Every path and method is routed; another method is 405.
    let client = reqwest::Client::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = send(
                client
                    .request(m, format!("{base}{path}"))
                    .bearer_auth(TOKEN),
            )
            .await;
            assert!(
                status != 404 && status != 405,
                "{method} {path} is described but answered {status}: {body}"
            );
        }
        let (status, _) = send(client.delete(format!("{base}{path}")).bearer_auth(TOKEN)).await;
        assert_eq!(status, 405, "DELETE {path}");
    }
    let (status, _) = send(client.get(format!("{base}/not-described"))).await;
    assert_eq!(status, 404);

    // Views: exactly the parser's.
    let views = &doc["paths"]["/majordodo"]["get"]["parameters"][0]["schema"]["enum"];
    assert_eq!(views, &json!(SUPPORTED_VIEWS));

    // Actions: every one the parser lists is described, and every described one is known to
    // the parser (not refused as an unknown action).
    let post_schema =
        &doc["paths"]["/majordodo"]["post"]["requestBody"]["content"]["application/json"]["schema"];
    let mapping = post_schema["discriminator"]["mapping"].as_object().unwrap();
    let actions: BTreeSet<String> = mapping.keys().cloned().collect();
    for a in SUPPORTED_ACTIONS {
        assert!(actions.contains(a), "action {a} is not described");
    }
    let schema_of = |action: &str| -> &Value {
        let reference = mapping[action].as_str().unwrap();
        &schemas[reference.rsplit('/').next().unwrap()]
    };
    let mut every_field = BTreeSet::new();
    for a in &actions {
        every_field.extend(properties(schema_of(a)));
        let answer = post(&base, &json!({"action": a})).await;
        assert!(
            !(answer.1 == "action" && answer.2.contains("unknown action")),
            "{a} is described but unknown to the parser: {answer:?}"
        );
    }
    let task_fields = properties(&schemas["TaskSubmission"]);
    every_field.extend(task_fields.iter().cloned());

    for a in &actions {
        let documented = properties(schema_of(a));
        for field in &every_field {
            let mut body = Map::new();
            body.insert("action".into(), a.as_str().into());
            body.insert(field.clone(), "x".into());
            let answer = post(&base, &Value::Object(body)).await;
            if documented.contains(field) {
                assert!(
                    !refused_as_unknown(field, &answer),
                    "{a}: documented field {field} is refused: {answer:?}"
                );
            } else {
                assert!(
                    refused_as_unknown(field, &answer),
                    "{a}: field {field} is not documented but not refused as unknown: {answer:?}"
                );
            }
        }
    }
    // Each element of submitTasks: the task fields, and no other.
    for field in &every_field {
        let answer = post(
            &base,
            &json!({"action": "submitTasks", "tasks": [{field.as_str(): "x"}]}),
        )
        .await;
        let at = format!("tasks[0].{field}");
        let (status, f, error) = &answer;
        let unknown = *status == 400 && *f == at && error.contains("is not a field of");
        assert_eq!(
            unknown,
            !task_fields.contains(field),
            "submitTasks element field {field}: {answer:?}"
        );
    }
    stop.cancel();
    let _ = broker.wait().await;
}
