//! RFC 9457 problem details: every error the API returns, with the fields at fault and the reason.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use control::ChangeError;
use model::validation::{FieldError, ValidationErrors};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Every field at fault, with the reason.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error response. Build it from a status, a problem slug, a title and detail.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub problem: Box<Problem>,
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            problem: Box::new(Problem {
                kind: format!("https://portico.dev/problems/{slug}"),
                title: title.to_string(),
                status: status.as_u16(),
                detail: detail.into(),
                errors: Vec::new(),
            }),
            retry_after: None,
        }
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> ApiError {
        self.problem.errors = errors;
        self
    }

    pub fn bad_request(detail: impl Into<String>, errors: Vec<FieldError>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad-request", "The request could not be read", detail)
            .with_errors(errors)
    }

    pub fn invalid(errors: ValidationErrors) -> ApiError {
        let n = errors.0.len();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "The input is not valid",
            format!("{n} field{} failed validation", if n == 1 { "" } else { "s" }),
        )
        .with_errors(errors.0)
    }

    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::invalid(ValidationErrors::single(field, message))
    }

    pub fn not_found(what: impl Into<String>) -> ApiError {
        let what = what.into();
        ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{what} does not exist"))
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the appliance could not complete the request; see its log",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&*self.problem).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(detail) => ApiError::conflict(detail),
            StoreError::NotFound(what) => ApiError::not_found(what),
            other => ApiError::internal(other),
        }
    }
}

impl From<ChangeError> for ApiError {
    fn from(e: ChangeError) -> ApiError {
        match e {
            ChangeError::Invalid(errors) => ApiError::invalid(errors),
            ChangeError::InUse(errors) => ApiError::new(
                StatusCode::CONFLICT,
                "in-use",
                "The change would take addresses that are in use",
                "release or move the allocations first",
            )
            .with_errors(errors.0),
            ChangeError::NotFound(what) => ApiError::not_found(what),
            ChangeError::Exists(what) => {
                ApiError::new(StatusCode::CONFLICT, "exists", "Already exists", format!("{what} already exists"))
            }
            ChangeError::Stale { kind, name, expected, actual } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "stale",
                "The object changed since you read it",
                match actual {
                    Some(a) => format!("{kind} '{name}' is at version \"{a}\", not \"{expected}\"; read it again"),
                    None => format!("{kind} '{name}' no longer exists"),
                },
            ),
            ChangeError::StaleConfig { expected, actual } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "stale",
                "The configuration changed since you read it",
                format!("the configuration is at revision {actual}, not {expected}; read it again"),
            ),
            ChangeError::ConfirmPending { revision, deadline } => ApiError::new(
                StatusCode::CONFLICT,
                "confirm-pending",
                "A change awaits confirmation",
                format!(
                    "revision {revision} reverts at {} unless POST /api/v1/config/confirm arrives first",
                    crate::rfc3339(deadline)
                ),
            ),
            ChangeError::NothingToConfirm => {
                ApiError::new(StatusCode::CONFLICT, "nothing-to-confirm", "Nothing to confirm", e.to_string())
            }
            ChangeError::Store(s) => s.into(),
            other => ApiError::internal(other),
        }
    }
}
