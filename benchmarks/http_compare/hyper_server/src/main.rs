// hyper 0.14 over a Unix socket: the reference for benchmarks/http_compare. Answers
// GET|HEAD /info like examples/http_server.cpp (200, application/json,
// {"pid":…,"uid":…,"gid":…}\n of the peer, SO_PEERCRED read once per connection), 404
// otherwise. One thread (tokio current_thread), like http_server --threads 1. hyper
// adds its cached Date header itself.
//
//   hyper_server PATH
use std::convert::Infallible;

use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::Http;
use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode};
use tokio::net::UnixListener;

fn answer(req: &Request<Body>, info: &Bytes) -> Response<Body> {
    let json = HeaderValue::from_static("application/json");
    let (status, body) = match (req.uri().path(), req.method()) {
        ("/info", &Method::GET) | ("/info", &Method::HEAD) => (StatusCode::OK, info.clone()),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"{\"message\":\"page not found\"}\n")),
    };
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, json);
    resp
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: hyper_server PATH");
    let _ = std::fs::remove_file(&path);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async move {
        let listener = UnixListener::bind(&path).expect("bind");
        eprintln!("hyper_server: listening on {}", path);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("hyper_server: accept: {}", e);
                    continue;
                }
            };
            let info = match stream.peer_cred() {
                Ok(c) => Bytes::from(format!(
                    "{{\"pid\":{},\"uid\":{},\"gid\":{}}}\n",
                    c.pid().unwrap_or(0),
                    c.uid(),
                    c.gid()
                )),
                Err(_) => Bytes::from_static(b"{}\n"),
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Body>| {
                    let resp = answer(&req, &info);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = Http::new().http1_only(true).http1_keep_alive(true).serve_connection(stream, svc).await;
            });
        }
    });
}
