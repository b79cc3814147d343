//! One `serve` over the one handler: stdio (the default; the live views get a loopback HTTP
//! listener of their own) or HTTP (streamable + legacy SSE, views and reviews on the same port).

use std::sync::Arc;

use anyhow::Result;
use rmcp::ServiceExt;
use tokio_util::sync::CancellationToken;

use super::HttpOptions;
use crate::mcp::DeskvmServer;
use crate::session::SessionManager;

pub enum Transport {
    /// stdio, with the live view on its own loopback listener at this address.
    Stdio {
        view_addr: std::net::SocketAddr,
    },
    Http(HttpOptions),
}

/// Serves `manager` until the client goes (stdio), or until SIGINT/SIGTERM; then stops every
/// session.
pub async fn serve(manager: Arc<SessionManager>, transport: Transport) -> Result<()> {
    let server = DeskvmServer::new(manager.clone());
    let result = match transport {
        // A failed handshake still ends in the shutdown below (it removes prepared VMs).
        Transport::Stdio { view_addr } => {
            let views_done = CancellationToken::new();
            let _stop_views = views_done.clone().drop_guard();
            match super::view::listen(view_addr, server.views(), views_done).await {
                Ok(addr) => {
                    tracing::info!(%addr, "live view listener");
                    crate::storage::describe_instance(
                        manager.layout(),
                        &format!("stdio; live view at http://{addr}/view/"),
                    );
                }
                // The desktops still work; session_view says why it cannot.
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "no live view"),
            }
            match server.serve(rmcp::transport::stdio()).await {
                Ok(service) => tokio::select! {
                    r = service.waiting() => r.map(|_| ()).map_err(anyhow::Error::from),
                    _ = shutdown_signal() => Ok(()),
                },
                Err(e) => Err(e.into()),
            }
        }
        Transport::Http(o) => {
            let ct = CancellationToken::new();
            let stop = ct.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stop.cancel();
            });
            let layout = manager.layout().clone();
            super::serve_http(server, o, ct, |addr, exposed| {
                // stdout is free when serving HTTP: the first line says where (port 0 picks one).
                println!("deskvm: serving MCP at http://{addr}/mcp");
                tracing::info!(%exposed, "serving HTTP");
                crate::storage::describe_instance(&layout, &exposed);
            })
            .await
        }
    };
    manager.shutdown().await;
    crate::storage::unregister_instance(manager.layout());
    result
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
