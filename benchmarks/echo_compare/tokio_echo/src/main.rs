// tokio_echo PATH: single-threaded tokio echo server on a Unix stream socket, the tokio
// peer of run.sh. A current_thread runtime, a UnixListener, and a task per connection
// doing read into a 16 KiB buffer and write_all of what came back. SIGTERM ends it
// (default action; run.sh removes the socket file).
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

async fn echo(mut sock: UnixStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return, // end of stream or a reset
            Ok(n) => n,
        };
        if sock.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn main() {
    let path = match std::env::args().nth(1) {
        Some(p) => p,
        None => {
            eprintln!("usage: tokio_echo PATH");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        loop {
            match listener.accept().await {
                Ok((sock, _)) => {
                    tokio::spawn(echo(sock));
                }
                Err(e) => eprintln!("tokio_echo: accept: {e}"),
            }
        }
    });
}
