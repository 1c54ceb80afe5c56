//! Phase 2: may the request go on? The matching route's rate limit decides (a 429 with
//! `Retry-After` when it refuses).

use super::RequestInfo;
use crate::{ProxyError, ProxySettings};

/// `Ok` when the request may go on; the refusal otherwise.
pub(crate) async fn check(settings: &ProxySettings, info: &RequestInfo) -> Result<(), ProxyError> {
    let Some((i, key)) = info.route else {
        return Ok(());
    };
    let route = &settings.routes[i];
    match route.limiter.check(key).await {
        Ok(()) => Ok(()),
        Err(refused) => Err(ProxyError::RateLimited {
            limit: route.name.clone(),
            retry_after: refused.retry_after,
        }),
    }
}
