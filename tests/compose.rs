//! Guards `docker-compose.yml` against drifting from the CLI: no Docker
//! engine runs here, so every service's command line (and health check) is
//! run against the local build, with volumes mapped to a temporary directory,
//! container addresses to loopback and the configuration files the brokers
//! read (`examples/compose/`) rewritten the same way. Two states' brokers
//! run, linked: an alert published at a Tajik post reaches the Afghan
//! officer at Afghanistan's broker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_yaml::Value;

fn compose() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("docker-compose.yml"))
        .expect("valid YAML")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Rewrites one argument of a container command for this machine.
struct Remap {
    root: PathBuf,
    service: String,
    /// Container address → where it really is here.
    addresses: HashMap<String, String>,
}

impl Remap {
    fn arg(&self, arg: &str) -> String {
        let mut out = arg.to_owned();
        for (from, to) in &self.addresses {
            out = out.replace(from, to);
        }
        let data = self.root.join(format!("data-{}", self.service));
        out.replace("/certs", self.root.join("certs").to_str().expect("utf-8"))
            .replace("/data", data.to_str().expect("utf-8"))
    }

    fn args(&self, args: &[String]) -> Vec<String> {
        args.iter().map(|a| self.arg(a)).collect()
    }

    /// The service's command line; a configuration file it reads from the
    /// compose directory is rewritten like the command line (paths and
    /// addresses) into the temporary directory.
    fn command(&self, service: &Value) -> Vec<String> {
        let mut args = strings(&service["command"]);
        for arg in &mut args {
            if let Some(file) = arg.strip_prefix(COMPOSE_DIR) {
                let text = std::fs::read_to_string(repo().join("examples/compose").join(file))
                    .expect("a compose configuration file");
                let out = self.root.join(format!("{}.toml", self.service));
                std::fs::write(&out, self.arg(&text)).expect("write");
                *arg = out.to_str().expect("utf-8").to_owned();
            }
        }
        self.args(&args)
    }
}

/// Where the compose file mounts `examples/compose/`.
const COMPOSE_DIR: &str = "/etc/liaison/compose/";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn liaison() -> Command {
    Command::new(env!("CARGO_BIN_EXE_liaison"))
}

/// Spawns a long-running service and returns it with its readiness line.
fn spawn(args: &[String]) -> (Child, mpsc::Receiver<String>) {
    let mut child = liaison()
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn ready(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let line = rx
        .recv_timeout(liaison_testkit::PATIENCE)
        .expect("readiness line");
    line.strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_owned()
}

fn healthy(service: &Value, remap: &Remap) {
    let test = strings(&service["healthcheck"]["test"]);
    assert_eq!(
        test.first().map(String::as_str),
        Some("CMD"),
        "health checks run a command"
    );
    assert_eq!(test.get(1).map(String::as_str), Some("liaison"));
    let out = liaison()
        .args(remap.args(&test[2..]))
        .output()
        .expect("health check");
    assert!(
        out.status.success(),
        "{}: health check failed: {}",
        remap.service,
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn every_service_of_the_compose_file_runs_against_the_local_build() {
    let file = compose();
    let services = &file["services"];
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    assert!(dockerfile.contains(" AS build"), "multi-stage Dockerfile");
    assert!(dockerfile.contains("ENTRYPOINT [\"liaison\"]"));
    assert_eq!(services["certs"]["build"].as_str(), Some("."));
    for (name, service) in services.as_mapping().expect("services") {
        assert_eq!(
            service["image"].as_str(),
            Some("liaison:dev"),
            "{name:?} uses the image built here"
        );
        for volume in strings(&service["volumes"]) {
            let source = volume.split(':').next().expect("volume name");
            if let Some(dir) = source.strip_prefix("./") {
                assert!(repo().join(dir).is_dir(), "bind mount {source} exists");
                continue;
            }
            assert!(
                file["volumes"].get(source).is_some(),
                "volume {source} is declared"
            );
        }
    }
    let root = tempfile::tempdir().expect("tmp");
    let mut remap = Remap {
        root: root.path().to_owned(),
        service: String::new(),
        addresses: HashMap::from([
            ("0.0.0.0:7443".to_owned(), "127.0.0.1:0".to_owned()),
            ("0.0.0.0:7453".to_owned(), "127.0.0.1:0".to_owned()),
            ("0.0.0.0:9464".to_owned(), "127.0.0.1:0".to_owned()),
            // The image copies the example files there (Dockerfile).
            (
                "/etc/liaison/policy.example.toml".to_owned(),
                repo()
                    .join("policy.example.toml")
                    .to_str()
                    .expect("utf-8")
                    .to_owned(),
            ),
        ]),
    };
    let mut children = Children(Vec::new());

    // certs: a shell command line with `liaison` on the PATH.
    remap.service = "certs".into();
    assert_eq!(strings(&services["certs"]["entrypoint"]), ["/bin/sh", "-c"]);
    let script = remap.arg(&strings(&services["certs"]["command"])[0]);
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_liaison"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for _ in 0..2 {
        // Twice: the second run must see the PKI and leave it alone.
        let out = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("PATH", &path)
            .output()
            .expect("certs");
        assert!(
            out.status.success(),
            "certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(root.path().join("certs/tj/ca.crt").is_file());
    assert!(root.path().join("certs/af/peers/tj-ca.crt").is_file());

    // Afghanistan's broker first (Tajikistan's dials it), then Tajikistan's.
    for (service, port) in [("broker-af", "7453"), ("broker", "7443")] {
        remap.service = service.into();
        let (child, out) = spawn(&remap.command(&services[service]));
        children.0.push(child);
        let url = ready(&out, "liaison: listening on ");
        remap
            .addresses
            .insert(format!("https://localhost:{port}"), url.clone());
        healthy(&services[service], &remap);
        remap
            .addresses
            .insert(format!("https://{service}:{port}"), url.clone());
    }

    // posts behind agents
    let mut agents = HashMap::new();
    for post in ["post-ishkashim", "post-khorog"] {
        remap.service = post.into();
        let mut args = strings(&services[post]["command"]);
        assert!(args.iter().all(|a| !a.starts_with(COMPOSE_DIR)));
        let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
        args[listen] = "127.0.0.1:0".into();
        let (child, out) = spawn(&remap.args(&args));
        children.0.push(child);
        let url = ready(&out, "liaison agent: listening on ");
        let mut local = Remap {
            root: remap.root.clone(),
            service: post.into(),
            addresses: remap.addresses.clone(),
        };
        local
            .addresses
            .insert("http://127.0.0.1:7444".into(), url.clone());
        healthy(&services[post], &local);
        agents.insert(post, url);
    }

    // the officer
    remap.service = "officer".into();
    let (child, officer_out) = spawn(&remap.args(&strings(&services["officer"]["command"])));
    children.0.push(child);

    // What the file's header shows: publish at a post, the officer sees it.
    let out = liaison()
        .args(["publish", "--broker", &agents["post-ishkashim"]])
        .args([
            "--category",
            "drugs",
            "--severity",
            "severe",
            "--tlp",
            "green",
            "--headline",
            "Heroin seized at the bridge",
        ])
        .output()
        .expect("publish");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = officer_out
        .recv_timeout(Duration::from_secs(30))
        .expect("the officer at Afghanistan's broker received the alert");
    assert!(line.contains("Heroin seized at the bridge"), "{line}");
    assert!(
        line.contains("urn:liaison:TJ:border-guard:ishkashim"),
        "{line}"
    );
    assert!(
        line.contains("via urn:liaison:TJ:liaison:broker"),
        "it crossed from Tajikistan's broker: {line}"
    );
}
