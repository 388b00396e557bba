//! A TCP proxy between a server and PostgreSQL that a test can cut and
//! restore: a database outage for one replica, without touching the shared
//! PostgreSQL server.

use std::{net::SocketAddr, str::FromStr};

use sqlx::postgres::PgConnectOptions;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

pub struct CuttableProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    cut: watch::Sender<bool>,
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
        let (cut, _) = watch::channel(false);
        let watch = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    // Cut: the connection is refused as soon as it is made.
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, upstream, watch.subscribe()));
            }
        });
        Self {
            addr,
            upstream,
            cut,
            task,
        }
    }

    /// `database_url` with its server replaced by this proxy.
    pub fn url(&self, database_url: &str) -> String {
        database_url.replacen(&self.upstream.to_string(), &self.addr.to_string(), 1)
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.wait_for(|cut| *cut) => {}
    }
}
