//! The OpenAPI 3.1 document. Routes, parameters and bodies come from the `#[utoipa::path]`
//! on each handler; what every route shares is added here from one place each: the bearer
//! security scheme, who may call a route (from the access table, [`crate::auth::need`]), and
//! the error answers a route can give, all in the one error shape.

use crate::auth::{need, Need};
use crate::error::ErrorBody;
use http::Method;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, Response};
use utoipa::{PartialSchema, ToSchema};

/// Name of the security scheme every `/v1` route uses.
pub const SCHEME: &str = "bearer";

/// Fills in what the handlers' annotations leave to one place.
pub fn complete(mut api: OpenApi) -> OpenApi {
    api.info.title = "gancho API".into();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    api.info.description = Some(
        "Tenants, API keys and webhook endpoints of a gancho installation. Every /v1 route \
         takes `Authorization: Bearer <token>`: the admin token, or a tenant's API key \
         (`gk_...`), which reaches only its own tenant and the routes its scopes allow. \
         Errors are `{\"error\": {\"code\", \"message\"}}`; lists take `limit` and `cursor` \
         and answer `{\"data\": [...], \"next\"}`."
            .into(),
    );
    api.info.license = None;
    api.info.contact = None;

    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token, or a tenant API key (`gk_` and 40 characters).",
                ))
                .build(),
        ),
    );
    let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    <ErrorBody as ToSchema>::schemas(&mut schemas);
    components.schemas.extend(schemas);

    for (path, item) in api.paths.paths.iter_mut() {
        let ops = [
            (Method::GET, &mut item.get),
            (Method::POST, &mut item.post),
            (Method::PUT, &mut item.put),
            (Method::PATCH, &mut item.patch),
            (Method::DELETE, &mut item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                document(op, &method, path);
            }
        }
    }
    api
}

fn document(op: &mut Operation, method: &Method, path: &str) {
    op.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
    let who = match need(method, path) {
        Need::Admin => "Needs the admin token.".to_owned(),
        Need::Tenant(None) => "The admin token, or any API key of the tenant.".to_owned(),
        Need::Tenant(Some(gancho_store::Scope::Read)) => {
            "The admin token, or an API key of the tenant with the `read` or the `manage` scope."
                .to_owned()
        }
        Need::Tenant(Some(scope)) => format!(
            "The admin token, or an API key of the tenant with the `{}` scope.",
            scope.as_str()
        ),
        Need::TenantKey(scope) => format!(
            "The admin token, or an API key of the tenant with the `{}` scope (not a portal session).",
            scope.as_str()
        ),
    };
    op.description = Some(match op.description.take() {
        Some(d) if !d.is_empty() => format!("{d}\n\n{who}"),
        _ => who,
    });

    let has_body = op.request_body.is_some();
    let has_query = op.parameters.as_ref().is_some_and(|ps| {
        ps.iter()
            .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
    });
    let mut errors = vec![
        ("401", "No token, or an unknown or revoked one."),
        (
            "503",
            "The config store or JetStream is unavailable; retry shortly.",
        ),
    ];
    match need(method, path) {
        Need::Admin => errors.push(("403", "An API key on an admin route.")),
        Need::Tenant(Some(_)) => {
            errors.push(("403", "An API key without the scope this route needs."))
        }
        Need::TenantKey(_) => errors.push((
            "403",
            "An API key without the scope this route needs, or a portal session.",
        )),
        Need::Tenant(None) => {}
    }
    if !matches!(need(method, path), Need::Admin) {
        errors.push((
            "429",
            "This API key or portal session is past its rate (GANCHO_API_RATE_LIMIT requests a second per credential, 50 by default, bursts of twice that; the admin token is not limited); `Retry-After` says when to try again.",
        ));
    }
    if path.contains('{') {
        errors.push((
            "404",
            "No such tenant or resource (also another tenant's, for an API key).",
        ));
    }
    if has_body || has_query || path.contains('{') {
        errors.push((
            "400",
            "The request is malformed: bad JSON, an unknown field, a wrong type, or a bad query.",
        ));
    }
    if has_body {
        errors.push(("413", "The body is larger than 64 KiB."));
        errors.push((
            "422",
            "A value is not accepted; the message names the field and what to change.",
        ));
    }
    for (status, description) in errors {
        op.responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description).into());
    }
}

fn error_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        Content::new(Some(Ref::from_schema_name(ErrorBody::name()))),
    );
    response
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_operation_is_secured_and_documents_its_errors() {
        let api = crate::openapi();
        let mut operations = 0;
        for (path, item) in &api.paths.paths {
            for op in [&item.get, &item.post, &item.patch, &item.delete]
                .into_iter()
                .flatten()
            {
                operations += 1;
                assert!(op.security.is_some(), "{path}");
                for status in ["401", "503"] {
                    assert!(
                        op.responses.responses.contains_key(status),
                        "{path} {status}"
                    );
                }
            }
        }
        assert!(operations >= 14, "{operations} operations");
        let json = api.to_json().unwrap();
        assert!(json.contains("\"openapi\":\"3.1"), "OpenAPI 3.1");
    }
}
