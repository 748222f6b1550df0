//! OAUTHBEARER with OpenID Connect, as far as it can be proven here (no
//! broker on this machine speaks OAUTHBEARER): a client made from Sluice's
//! settings asks a token endpoint that the test serves for a token with the
//! client credentials grant, its scope and its client id and secret, and
//! takes the token it is given.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

const CLIENT_SECRET: &str = "oidc-client-s3cret-91b2";

/// One request the token endpoint received: its request line, headers
/// (names in lower case) and body.
struct Request {
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A token whose claims say who it is for and when it expires, as a token
/// endpoint answers (the signature is not checked by a client).
fn token() -> String {
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 3600;
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(&serde_json::json!({"sub": "sluice", "exp": exp, "iat": exp - 3600})),
    )
}

/// Serves one token request on `listener`, sending what it received.
fn serve_token(listener: TcpListener, received: mpsc::Sender<Request>) {
    let Ok((stream, _)) = listener.accept() else {
        return;
    };
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("request line");
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).expect("a header");
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_lowercase(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("the body");
    let answer = serde_json::json!({
        "access_token": token(),
        "token_type": "bearer",
        "expires_in": 3600,
    })
    .to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{answer}",
        answer.len()
    );
    let _ = received.send(Request {
        line: line.trim_end().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    });
}

#[test]
fn a_client_asks_the_token_endpoint_with_client_credentials_scope_and_secret() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a port for the token endpoint");
    let endpoint = format!(
        "http://{}/oauth2/token",
        listener.local_addr().expect("addr")
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || serve_token(listener, tx));

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("client-secret"),
        format!("{CLIENT_SECRET}\n"),
    )
    .expect("secret file");
    // No broker listens on the bootstrap port: the token is fetched before
    // any connection, and that is what this test looks at.
    let text = format!(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:{port}\"\n\
         [kafka.sasl]\nmechanism = \"OAUTHBEARER\"\ntoken_endpoint = \"{endpoint}\"\n\
         client_id = \"sluice-client\"\nclient_secret_file = \"client-secret\"\n\
         scope = \"kafka.read\"\n\
         [kafka.sasl.extensions]\nlogicalCluster = \"lkc-1\"\n\
         [[routes]]\ntopic = \"orders\"\nmodule = \"uppercase\"\n",
        port = sluice_tests::broker::free_port(),
    );
    std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
    std::fs::write(dir.path().join("plugins/uppercase.wasm"), b"").expect("module file");
    let config = sluice::config::Config::parse(&text, dir.path(), &|_| None)
        .unwrap_or_else(|e| panic!("config: {e}"));
    let client = sluice::kafka::consumer_config(&config, &config.kafka.bootstrap_servers)
        .expect("client settings");
    let consumer: BaseConsumer = client.create().expect("an OIDC client is created");
    consumer.subscribe(&["orders"]).expect("subscribe");

    let deadline = Instant::now() + Duration::from_secs(30);
    let request = loop {
        // Polling serves the client's callbacks; the token refresh runs on
        // librdkafka's background thread.
        let _ = consumer.poll(Duration::from_millis(100));
        match rx.try_recv() {
            Ok(request) => break request,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("no token request within 30 s: {e}"),
        }
    };
    assert_eq!(request.line, "POST /oauth2/token HTTP/1.1");
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("sluice-client:{CLIENT_SECRET}"));
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {basic}").as_str()),
        "client id and secret in the Authorization header, the secret file's line \
         without its newline"
    );
    let form: Vec<(String, String)> = url_form(&request.body);
    assert!(
        form.contains(&("grant_type".to_owned(), "client_credentials".to_owned())),
        "{form:?}"
    );
    assert!(
        form.contains(&("scope".to_owned(), "kafka.read".to_owned())),
        "{form:?}"
    );
}

/// The pairs of an `application/x-www-form-urlencoded` body.
fn url_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
