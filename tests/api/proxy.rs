//! A TCP proxy between a server and PostgreSQL that a test can cut, freeze
//! and restore: a database outage for one replica, without touching the
//! shared PostgreSQL server.

use std::{net::SocketAddr, str::FromStr};

use sqlx::postgres::PgConnectOptions;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Connections are closed, new ones refused: what a server sees when
    /// the database goes down.
    Cut,
    /// Connections stay open but nothing goes through, now or ever, new
    /// ones included until restored: a network partition, which only a
    /// timeout can reveal.
    Frozen,
}

pub struct CuttableProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl CuttableProxy {
    /// Starts forwarding to the PostgreSQL server of `database_url`.
    pub async fn start(database_url: &str) -> Self {
        let options = PgConnectOptions::from_str(database_url).unwrap();
        let upstream: SocketAddr = format!("{}:{}", options.get_host(), options.get_port())
            .parse()
            .expect("test PostgreSQL is addressed by IP");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Forward);
        let watch = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let now = *watch.borrow();
                match now {
                    Mode::Forward => {
                        tokio::spawn(forward(client, upstream, watch.subscribe()));
                    }
                    Mode::Cut => drop(client),
                    Mode::Frozen => {
                        tokio::spawn(hold(client));
                    }
                }
            }
        });
        Self {
            addr,
            upstream,
            mode,
            task,
        }
    }

    /// `database_url` with its server replaced by this proxy.
    pub fn url(&self, database_url: &str) -> String {
        database_url.replacen(&self.upstream.to_string(), &self.addr.to_string(), 1)
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Stops every forwarded connection dead, without closing it; new
    /// connections are accepted and go nowhere. Restoring does not revive
    /// the frozen ones.
    pub fn freeze(&self) {
        self.mode.send_replace(Mode::Frozen);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let stopped = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => return,
        stopped = mode.wait_for(|mode| *mode != Mode::Forward) => stopped.map(|mode| *mode),
    };
    if matches!(stopped, Ok(Mode::Frozen)) {
        hold((client, server)).await;
    }
}

/// Keeps sockets open, silently, until the test's runtime ends.
async fn hold<T>(sockets: T) {
    let _open = sockets;
    std::future::pending::<()>().await;
}
