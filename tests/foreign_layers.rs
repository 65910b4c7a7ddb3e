//! OCI foreign layers: a layout whose layer is not in `blobs/` but at a URL, served over HTTPS
//! by `openssl s_server` requiring a client certificate, with the TLS material read from
//! `create.remote_layer_client_certificates_path` as GrootFS reads it; the same image pushed to
//! a registry, which holds all but that layer.

#[allow(dead_code)]
mod common;
#[allow(dead_code)]
#[path = "support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestStore;
use nestfs_testimages::{Compression, Image, Layer, write_layout};
use registry::Registry;
use sha2::{Digest, Sha256};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=nestfs test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    // Extensions make them X.509 v3 certificates, the only version webpki accepts.
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &["-subj", &subj, "-keyout", &key, "-out", &csr],
            ]
            .concat(),
        );
        let sign = [
            "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1",
            "-extfile", &ext, "-out", &pem,
        ];
        openssl(dir, &sign);
    }
}

/// `openssl s_server -WWW` serving `root` over HTTPS on loopback, asking for a client
/// certificate signed by the CA; killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(pki: &Path, root: &Path) -> Server {
        Server::start_as(pki, root, "server")
    }

    /// With `NAME.pem` and `NAME.key` of `pki` as the server's certificate and key.
    fn start_as(pki: &Path, root: &Path, name: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .current_dir(root)
            .args(["s_server", "-WWW", "-quiet", "-Verify", "1"])
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(pki.join(format!("{name}.pem")))
            .arg("-key")
            .arg(pki.join(format!("{name}.key")))
            .arg("-CAfile")
            .arg(pki.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let mut s = Server { child, port };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = s.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(10),
                "s_server did not start ({exited:?})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Writes a one-layer image to `layout`, then moves its layer blob out to `served/layer`
/// and has the manifest point at `url` for it. Returns the blob.
fn foreign_layout(layout: &Path, served: &Path, url: &str) -> Vec<u8> {
    let image = Image {
        layers: vec![Layer::new(Compression::Gzip).dir("etc", 0o755).file(
            "etc/foreign",
            0o644,
            "from afar\n",
        )],
        env: None,
        tag: None,
    };
    write_layout(layout, &image).unwrap();
    let blob_path = |d: &str| layout.join("blobs/sha256").join(&d["sha256:".len()..]);
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let old = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob_path(&old)).unwrap()).unwrap();
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    manifest["layers"][0]["urls"] = serde_json::json!([url]);
    let blob = std::fs::read(blob_path(&digest)).unwrap();
    std::fs::write(served.join("layer"), &blob).unwrap();
    std::fs::remove_file(blob_path(&digest)).unwrap();
    std::fs::remove_file(blob_path(&old)).unwrap();
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let new = sha256(&bytes);
    std::fs::write(blob_path(&new), &bytes).unwrap();
    index["manifests"][0]["digest"] = new.into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
    blob
}

/// A config file naming `certs` as the remote layer certificates directory.
fn config(s: &TestStore, name: &str, certs: &Path) -> PathBuf {
    let cfg = s.dir.path().join(name);
    let yaml = format!(
        "create:\n  remote_layer_client_certificates_path: {}\n",
        certs.display()
    );
    std::fs::write(&cfg, yaml).unwrap();
    cfg
}

fn nothing_cached(s: &TestStore) {
    for dir in ["volumes", "tmp"] {
        let n = std::fs::read_dir(s.root().join(dir)).unwrap().count();
        assert_eq!(n, 0, "{dir} not empty");
    }
}

/// A foreign-layer image in an OCI layout, its blob served over HTTPS to holders of a client
/// certificate, and certificate directories: CA only, and CA plus client pair (GrootFS's
/// layout: CA certificates *.crt, client pairs NAME.cert/NAME.key).
struct Fixture {
    tmp: tempfile::TempDir,
    served: PathBuf,
    url: String,
    blob: Vec<u8>,
    _server: Server,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let (pki, served) = (tmp.path().join("pki"), tmp.path().join("www"));
        for d in [&pki, &served] {
            std::fs::create_dir(d).unwrap();
        }
        make_pki(&pki);
        let server = Server::start(&pki, &served);
        let url = format!("https://127.0.0.1:{}/layer", server.port);
        let blob = foreign_layout(&tmp.path().join("layout"), &served, &url);
        for d in ["trust", "full"] {
            let d = tmp.path().join(d);
            std::fs::create_dir(&d).unwrap();
            std::fs::copy(pki.join("ca.pem"), d.join("ca.crt")).unwrap();
        }
        let full = tmp.path().join("full");
        std::fs::copy(pki.join("client.pem"), full.join("client.cert")).unwrap();
        std::fs::copy(pki.join("client.key"), full.join("client.key")).unwrap();
        Fixture {
            tmp,
            served,
            url,
            blob,
            _server: server,
        }
    }

    fn layout(&self) -> PathBuf {
        self.tmp.path().join("layout")
    }

    fn certs(&self, which: &str) -> PathBuf {
        self.tmp.path().join(which)
    }

    fn serve(&self, blob: &[u8]) {
        std::fs::write(self.served.join("layer"), blob).unwrap();
    }
}

#[test]
fn foreign_layer_needs_the_client_certificate_and_its_digest() {
    require_root_fuse!();
    let f = Fixture::new();
    let image = format!("oci://{}", f.layout().display());
    let s = TestStore::new();
    let untrusted = s.run(&["create", &image, "a"]);
    assert_eq!(untrusted.code, 1, "{untrusted:#?}");
    for words in ["foreign layer", "untrusted TLS certificate", &f.url] {
        assert!(untrusted.stdout.contains(words), "{words}: {untrusted:#?}");
    }
    let cfg = config(&s, "trust.yml", &f.certs("trust"));
    let no_cert = s.run(&["--config", cfg.to_str().unwrap(), "create", &image, "b"]);
    assert_eq!(no_cert.code, 1, "{no_cert:#?}");
    for words in [
        "TLS handshake failed",
        "remote_layer_client_certificates_path",
    ] {
        assert!(no_cert.stdout.contains(words), "{words}: {no_cert:#?}");
    }
    assert_eq!(no_cert.stdout.trim().lines().count(), 1, "{no_cert:#?}");
    nothing_cached(&s);

    let cfg = config(&s, "full.yml", &f.certs("full"));
    let cfg = cfg.to_str().unwrap();
    // Another OS byte in the gzip header: the same size, still a valid layer, another digest.
    let mut forged = f.blob.clone();
    forged[9] ^= 0x01;
    f.serve(&forged);
    let r = s.run(&["--config", cfg, "create", &image, "c"]);
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("digest mismatch"), "{r:#?}");
    nothing_cached(&s);

    f.serve(&f.blob);
    s.run(&["--config", cfg, "create", &image, "d"]).ok();
    let file = s.root().join("images/d/rootfs/etc/foreign");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "from afar\n");
}

#[test]
fn registry_image_with_a_foreign_layer() {
    require_root_fuse!();
    let f = Fixture::new();
    let reg = Registry::start(false);
    let image = reg.push(&f.layout(), "foreign", "1");
    let s = TestStore::new();
    let cfg = config(&s, "full.yml", &f.certs("full"));
    let create = ["--config", cfg.to_str().unwrap(), "create"];
    let insecure = ["--insecure-registry", reg.addr.as_str()];
    s.run(&[&create[..], &insecure, &[&image, "r"]].concat())
        .ok();
    let file = s.root().join("images/r/rootfs/etc/foreign");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "from afar\n");
}

#[test]
fn foreign_layer_stalling_mid_body_fails_in_bounded_time() {
    require_root_fuse!();
    let tmp = tempfile::tempdir().unwrap();
    let (served, layout) = (tmp.path().join("www"), tmp.path().join("layout"));
    std::fs::create_dir(&served).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/layer", listener.local_addr().unwrap());
    let blob = foreign_layout(&layout, &served, &url);
    // Answers with half the blob, then holds the connection open without a word more.
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut held = Vec::new();
        for mut c in listener.incoming().flatten() {
            let _ = c.read(&mut [0; 4096]);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", blob.len());
            let _ = c.write_all(head.as_bytes());
            let _ = c.write_all(&blob[..blob.len() / 2]);
            held.push(c);
        }
    });
    let s = TestStore::new();
    let start = Instant::now();
    let r: common::Run = s
        .cmd()
        .env("NESTFS_READ_TIMEOUT_MS", "500")
        .args(["create", &format!("oci://{}", layout.display()), "stall"])
        .output()
        .unwrap()
        .into();
    assert_eq!(r.code, 1, "{r:#?}");
    assert!(r.stdout.contains("timed out"), "{r:#?}");
    assert!(start.elapsed() < Duration::from_secs(20));
    nothing_cached(&s);
}

/// A self-signed server certificate made the way `openssl req -x509` makes one (`CA:TRUE`)
/// and trusted as a CA: Go's TLS, and so GrootFS, accepts it as the server's own; webpki alone
/// refuses a CA as end entity. Accepted only for the names it holds, and only once trusted.
#[test]
fn a_trusted_self_signed_server_certificate_is_accepted_as_grootfs_accepts_it() {
    require_root_fuse!();
    let f = Fixture::new();
    let pki = f.tmp.path().join("pki");
    for (name, san) in [
        ("selfsigned", "IP:127.0.0.1"),
        ("othername", "DNS:other.example"),
    ] {
        let (key, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.pem"),
            format!("subjectAltName={san}"),
        );
        openssl(
            &pki,
            &[
                "req",
                "-x509",
                "-days",
                "1",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=registry",
                "-addext",
                &ext,
                "-keyout",
                &key,
                "-out",
                &pem,
            ],
        );
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in"])
            .arg(pki.join(&pem))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
            "openssl made {name} without CA:TRUE"
        );
    }
    // A store each: the two images share their layer, which the first would cache.
    for name in ["selfsigned", "othername"] {
        let s = TestStore::new();
        let served = f.tmp.path().join(format!("www-{name}"));
        std::fs::create_dir(&served).unwrap();
        let server = Server::start_as(&pki, &served, name);
        let url = format!("https://127.0.0.1:{}/layer", server.port);
        let layout = f.tmp.path().join(format!("layout-{name}"));
        foreign_layout(&layout, &served, &url);
        let image = format!("oci://{}", layout.display());
        let certs = f.tmp.path().join(format!("certs-{name}"));
        std::fs::create_dir(&certs).unwrap();
        std::fs::copy(pki.join("client.pem"), certs.join("client.cert")).unwrap();
        std::fs::copy(pki.join("client.key"), certs.join("client.key")).unwrap();
        let cfg = config(&s, "certs.yml", &certs);
        let cfg = cfg.to_str().unwrap();
        let untrusted = s.run(&["--config", cfg, "create", &image, "untrusted"]);
        assert_eq!(untrusted.code, 1, "{untrusted:#?}");
        assert!(
            untrusted.stdout.contains("untrusted TLS certificate"),
            "{untrusted:#?}"
        );
        std::fs::copy(pki.join(format!("{name}.pem")), certs.join("registry.crt")).unwrap();
        let trusted = s.run(&["--config", cfg, "create", &image, "trusted"]);
        if name == "selfsigned" {
            assert_eq!(trusted.code, 0, "{trusted:#?}");
            let file = s.root().join("images/trusted/rootfs/etc/foreign");
            assert_eq!(std::fs::read_to_string(file).unwrap(), "from afar\n");
        } else {
            // Trusted, but made for another name than the server's.
            assert_eq!(trusted.code, 1, "{trusted:#?}");
            assert!(
                trusted.stdout.contains("untrusted TLS certificate"),
                "{trusted:#?}"
            );
        }
    }
}
