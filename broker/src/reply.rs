//! Building responses. Every response leaves here with language JAVA, version 401, and an ext
//! map (written as `{}` when empty): C++ clients crash without one, and Java clients read
//! `MSG_REGION` from it.

use sluice_protocol::remoting::ext::HeaderError;
use sluice_protocol::{response_code, ExtFields, RemotingCommand};

/// SUCCESS with no ext fields and no body.
pub(crate) fn ok(req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::response_to(req, response_code::SUCCESS, None)
}

/// SUCCESS with ext fields.
pub(crate) fn ok_ext(req: &RemotingCommand, ext: ExtFields) -> RemotingCommand {
    ok(req).with_ext(ext)
}

/// A failure with a remark saying why.
pub(crate) fn error(
    req: &RemotingCommand,
    code: i32,
    remark: impl Into<String>,
) -> RemotingCommand {
    RemotingCommand::response_to(req, code, Some(remark.into()))
}

/// SYSTEM_ERROR naming the header field that could not be read, as Java answers a
/// `RemotingCommandException` from header decoding.
pub(crate) fn bad_header(req: &RemotingCommand, err: &HeaderError) -> RemotingCommand {
    tracing::debug!(code = req.code, error = %err, "bad request header");
    error(req, response_code::SYSTEM_ERROR, err.to_string())
}

/// SYSTEM_ERROR for a body that could not be read.
pub(crate) fn bad_body(
    req: &RemotingCommand,
    what: &str,
    err: &dyn std::fmt::Display,
) -> RemotingCommand {
    tracing::debug!(code = req.code, error = %err, "bad request body");
    error(
        req,
        response_code::SYSTEM_ERROR,
        format!("invalid {what} body: {err}"),
    )
}

/// REQUEST_CODE_NOT_SUPPORTED with Java's exact remark.
pub(crate) fn not_supported(req: &RemotingCommand) -> RemotingCommand {
    error(
        req,
        response_code::REQUEST_CODE_NOT_SUPPORTED,
        format!(" request type {} not supported", req.code),
    )
}
