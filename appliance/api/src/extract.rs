//! Request extractors that turn every malformed input into a problem document naming the field.

use crate::problem::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use bytes::Bytes;
use model::validation::FieldError;
use serde::de::DeserializeOwned;

/// A JSON (or, where a route allows it, YAML) request body. Unknown fields are refused by the types
/// themselves (`deny_unknown_fields`); type errors name the path of the bad field.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let yaml = is_yaml(req.headers().get(header::CONTENT_TYPE));
        let json = is_json(req.headers().get(header::CONTENT_TYPE));
        if !yaml && !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json (or application/yaml where the route accepts it)",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Request body too large",
                    rejection.body_text(),
                )
            } else {
                ApiError::bad_request(rejection.body_text(), vec![])
            }
        })?;
        parse_body(&bytes, yaml).map(Body)
    }
}

pub fn parse_body<T: DeserializeOwned>(bytes: &[u8], yaml: bool) -> Result<T, ApiError> {
    if yaml {
        let de = serde_yaml_ng::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(|e| path_error(e.path().to_string(), e.inner().to_string()))
    } else {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let value = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| path_error(e.path().to_string(), e.inner().to_string()))?;
        de.end().map_err(|e| path_error(".".into(), e.to_string()))?;
        Ok(value)
    }
}

fn path_error(path: String, message: String) -> ApiError {
    let field = if path == "." { String::new() } else { path };
    ApiError::bad_request(
        "the body does not match the expected document",
        vec![FieldError { field, message: strip_position(&message) }],
    )
}

/// serde_json appends "at line 1 column 17"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

pub fn is_yaml(content_type: Option<&header::HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.starts_with("application/yaml") || v.starts_with("application/x-yaml") || v.starts_with("text/yaml")
    })
}

fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    content_type.and_then(|v| v.to_str().ok()).is_some_and(|v| {
        let mime = v.split(';').next().unwrap_or("").trim();
        mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
    })
}

/// Query parameters; a bad one is a 400 naming it.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        match serde_path_to_error::deserialize(de) {
            Ok(v) => Ok(Query(v)),
            Err(e) => Err(ApiError::bad_request(
                "a query parameter is not valid",
                vec![FieldError { field: e.path().to_string(), message: e.inner().to_string() }],
            )),
        }
    }
}
