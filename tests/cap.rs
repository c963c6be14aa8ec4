//! CAP 1.2 in and out (docs/cap.md): a dozen documents shaped on the
//! standard's examples (examples/cap/*.xml, each valid against the OASIS
//! schema, vendored in tests/cap/schema) are imported, published, read back, exported, validated against
//! the OASIS schema by an independent validator (xmllint), compared with
//! the original by that validator's XPath, and imported again to the same
//! alert; bad documents are refused naming the element, and nothing of
//! them is stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use liaison::cap::{self, Layout};
use liaison::proto as pb;
use liaison_testkit::*;

const PUBLISHER: &str = "urn:liaison:TJ:border-guard:dushanbe";

/// In publishing order: an update and a cancel after what they reference.
const DOCS: [&str; 12] = [
    "01-seizure.xml",
    "02-multilingual.xml",
    "03-update.xml",
    "04-cancel.xml",
    "05-polygon.xml",
    "06-circle.xml",
    "07-health.xml",
    "08-restricted.xml",
    "09-private.xml",
    "10-resources.xml",
    "11-geocodes.xml",
    "12-exercise.xml",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cap")
}

fn schema() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cap/schema/CAP-v1.2.xsd")
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(name)).expect("a test document")
}

/// xmllint, if this machine has it. `tools/test` (the README's test
/// command, CI's) installs it and requires it.
fn xmllint() -> Option<&'static str> {
    let found = Command::new("xmllint").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("LIAISON_TEST_TOOLS").as_deref() != Ok("required"),
            "xmllint is required (Debian: apt-get install libxml2-utils; tools/test installs it)"
        );
        eprintln!("SKIPPED: the CAP schema checks need xmllint (libxml2-utils); run tools/test");
    }
    found.then_some("xmllint")
}

/// Validates `xml` against the OASIS CAP 1.2 schema, without network.
fn schema_valid(xmllint: &str, xml: &str, what: &str) {
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(tmp.path(), xml).expect("write");
    let out = Command::new(xmllint)
        .args(["--noout", "--nonet", "--schema"])
        .arg(schema())
        .arg(tmp.path())
        .output()
        .expect("xmllint");
    assert!(
        out.status.success(),
        "{what}: not valid CAP 1.2:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An XPath value of `xml`, read by xmllint (not by our code).
fn xpath(xmllint: &str, xml: &str, path: &str) -> String {
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(tmp.path(), xml).expect("write");
    let out = Command::new(xmllint)
        .args(["--nonet", "--xpath", path])
        .arg(tmp.path())
        .output()
        .expect("xmllint");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What an independent reader sees in a document: the header, and per
/// `<info>` its text and assessment, and how many parameters, event codes,
/// geocodes (not Liaison's own) and resources it has.
fn seen(xmllint: &str, xml: &str) -> Vec<String> {
    let el = |name: &str| format!("*[local-name()='{name}']");
    let mut out: Vec<String> = [
        "identifier",
        "sender",
        "status",
        "msgType",
        "scope",
        "incidents",
        "note",
        "source",
    ]
    .iter()
    .map(|n| {
        format!(
            "{n}={}",
            xpath(xmllint, xml, &format!("string(/{}/{})", el("alert"), el(n)))
        )
    })
    .collect();
    let infos: usize = xpath(xmllint, xml, &format!("count(//{})", el("info")))
        .trim()
        .parse()
        .unwrap_or(0);
    for i in 1..=infos {
        let info = format!("(//{})[{i}]", el("info"));
        for n in [
            "language",
            "category",
            "event",
            "headline",
            "description",
            "urgency",
            "severity",
        ] {
            out.push(format!(
                "info{i}.{n}={}",
                xpath(xmllint, xml, &format!("string({info}/{})", el(n)))
            ));
        }
        for (n, under) in [
            ("parameter", ""),
            ("eventCode", ""),
            ("geocode", "/*[local-name()='area']"),
        ] {
            let count = format!(
                "count({info}{under}/{}[not(starts-with({}, 'liaison:'))])",
                el(n),
                el("valueName")
            );
            out.push(format!("info{i}.{n}s={}", xpath(xmllint, xml, &count)));
        }
        let resources = format!("count({info}/{})", el("resource"));
        out.push(format!(
            "info{i}.resources={}",
            xpath(xmllint, xml, &resources)
        ));
    }
    out
}

#[test]
fn the_schema_is_the_oasis_file_unchanged() {
    use sha2::Digest;
    let bytes = std::fs::read(schema()).expect("schema");
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        digest,
        "b7798ef25868b068c97b268bda02d067c7d4ba9373adc5638bf37105804ee723"
    );
    assert!(String::from_utf8_lossy(&bytes).contains("Copyright OASIS Open 2010"));
}

#[tokio::test]
async fn every_document_goes_in_comes_out_valid_and_round_trips() {
    let xmllint = xmllint();
    let broker = TestBroker::start().await;
    let mut client = broker.client(PUBLISHER).await;
    let mut stored: HashMap<String, pb::AlertRecord> = HashMap::new();
    for name in DOCS {
        let original = read(name);
        if let Some(x) = xmllint {
            schema_valid(x, std::str::from_utf8(&original).expect("utf-8"), name);
        }
        let alert = cap::import(&original).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ack = client
            .publish(pb::PublishRequest {
                alert: Some(alert.clone()),
            })
            .await
            .unwrap_or_else(|s| panic!("{name}: the broker refused it: {}", s.message()))
            .into_inner();
        let record = client
            .get_alert(pb::GetAlertRequest { id: ack.id.clone() })
            .await
            .expect("get")
            .into_inner();
        stored.insert(ack.id.clone(), record.clone());
        let found = |id: &str| stored.get(id).cloned();
        let pretty = cap::export(&record, &found, Layout::Pretty).expect("export");
        let line = cap::export(&record, &found, Layout::OneLine).expect("export");
        assert!(!line.contains('\n'), "{name}: one line");
        // Imported again, the export is the same alert: every mapped field
        // made the round trip.
        for exported in [&pretty, &line] {
            let again = cap::import(exported.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(again, alert, "{name}: CAP → Liaison → CAP → Liaison");
        }
        if let Some(x) = xmllint {
            schema_valid(x, &pretty, &format!("{name}, exported"));
            schema_valid(x, &line, &format!("{name}, exported on one line"));
            let original = String::from_utf8(original).expect("utf-8");
            assert_eq!(
                seen(x, &pretty),
                seen(x, &original),
                "{name}: as xmllint reads it"
            );
        }
    }
    assert_eq!(stored.len(), DOCS.len());
}

#[test]
fn what_each_document_maps_to() {
    let get = |name| cap::import(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let param = |a: &pb::Alert, key: &str| {
        a.parameters
            .iter()
            .find(|p| p.key == key)
            .and_then(|p| p.value.clone())
    };
    use pb::parameter::Value as V;

    let a = get("01-seizure.xml");
    assert_eq!(a.id, "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a01");
    assert_eq!(a.category, pb::Category::Drugs as i32);
    let m = a.marking.clone().expect("marking");
    assert_eq!(
        (m.tlp, m.releasable_to, m.handling_codes),
        (
            pb::Tlp::Amber as i32,
            vec!["AF".to_owned()],
            vec!["LE-ONLY".to_owned()]
        )
    );
    assert_eq!(param(&a, "quantity"), Some(V::Integer(120)));
    assert_eq!(
        a.parameters
            .iter()
            .find(|p| p.key == "quantity")
            .map(|p| p.unit.as_str()),
        Some("kg")
    );
    assert_eq!(param(&a, "purity"), Some(V::Number(0.62)));
    assert_eq!(param(&a, "plate"), Some(V::Text("AF 1234 KBL".into())));
    assert_eq!(param(&a, "armed"), Some(V::Flag(false)));
    let area = a.area.clone().expect("area");
    assert_eq!(
        (area.crossing_point.as_str(), area.border_sector.as_str()),
        ("TJ-ISH", "TJ-AF/Pyanj")
    );
    assert_eq!(area.circles.len(), 1);
    assert!(a.description.contains('\n'), "line breaks kept");

    let a = get("02-multilingual.xml");
    assert_eq!(a.language, "en-GB");
    let t: Vec<&str> = a.translations.iter().map(|t| t.language.as_str()).collect();
    assert_eq!(t, ["ru", "tg"]);
    assert!(a.translations[0].headline.starts_with("Микроавтобус"));

    let a = get("03-update.xml");
    assert_eq!(a.msg_type, pb::MsgType::Update as i32);
    assert_eq!(a.references, ["0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a01"]);

    let a = get("06-circle.xml");
    assert_eq!(a.category, pb::Category::Cbrn as i32, "from CAP's CBRNE");
    assert_eq!(
        param(&a, "cap:event"),
        Some(V::Text("Radiation portal alarm".into()))
    );
    assert_eq!(
        param(&a, "cap:responseType"),
        Some(V::Text("Avoid Monitor".into()))
    );

    let a = get("07-health.xml");
    assert_eq!(
        a.marking.clone().expect("marking").tlp,
        pb::Tlp::Clear as i32,
        "scope Public"
    );
    assert_eq!(
        param(&a, "cap:effective"),
        Some(V::Text("2026-12-02T02:00:00+00:00".into()))
    );

    let a = get("08-restricted.xml");
    assert_ne!(a.id, "TJ-NCC-2026-0042");
    assert_eq!(
        a.id,
        get("08-restricted.xml").id,
        "the same document, the same id"
    );
    assert_eq!(
        param(&a, "cap:identifier"),
        Some(V::Text("TJ-NCC-2026-0042".into()))
    );
    assert_eq!(
        a.marking.clone().expect("marking").tlp,
        pb::Tlp::Amber as i32,
        "scope Restricted"
    );
    assert_eq!(
        param(&a, "cap:restriction"),
        Some(V::Text("Border services of Tajikistan only".into()))
    );
    assert_eq!(
        param(&a, "cap:code.0"),
        Some(V::Text("profile:CAP-TJ:1.0".into()))
    );

    let a = get("09-private.xml");
    let m = a.marking.expect("marking");
    assert_eq!(m.tlp, pb::Tlp::Red as i32, "scope Private");
    assert_eq!(m.recipients.len(), 2);

    let a = get("10-resources.xml");
    assert_eq!(a.attachments.len(), 1);
    let at = &a.attachments[0];
    assert_eq!(
        (at.filename.as_str(), at.description.as_str()),
        ("wagon 221.png", "Wagon 221 (photo)")
    );
    assert_eq!(at.content.len(), 69);
    assert!(
        matches!(param(&a, "cap:resource.1"), Some(V::Text(t)) if t.starts_with("application/pdf https://"))
    );

    let a = get("11-geocodes.xml");
    assert_eq!(
        param(&a, "cap:geocode:UGC"),
        Some(V::Text("KZC001 KZC002".into()))
    );
    assert_eq!(param(&a, "EAS-ORG"), Some(V::Text("WXR".into())));
    assert_eq!(param(&a, "cap:eventCode:SAME"), Some(V::Text("SVR".into())));
    assert_eq!(
        a.area.expect("area").description,
        "Korday pass; Ak-Zhol approach"
    );

    let a = get("12-exercise.xml");
    assert_eq!(a.status, pb::Status::Exercise as i32);
    let s = a.source.expect("source evaluation");
    assert_eq!(
        (s.reliability, s.accuracy),
        (
            pb::SourceReliability::B as i32,
            pb::InformationAccuracy::InformationAccuracy2 as i32
        )
    );
}

/// The seizure document with the first `from` replaced by `to`.
fn changed(from: &str, to: &str) -> Vec<u8> {
    let doc = String::from_utf8(read("01-seizure.xml")).expect("utf-8");
    assert!(doc.contains(from), "{from}");
    doc.replacen(from, to, 1).into_bytes()
}

/// Document `name` with every `from` replaced by `to`.
fn edited(name: &str, from: &str, to: &str) -> Vec<u8> {
    let doc = String::from_utf8(read(name)).expect("utf-8");
    assert!(doc.contains(from), "{from}");
    doc.replace(from, to).into_bytes()
}

/// Bad documents, the element each refusal must name, and words of the
/// rule it must give.
fn bad_documents() -> Vec<(&'static str, Vec<u8>, &'static str, &'static str)> {
    let ns = "urn:oasis:names:tc:emergency:cap:1.2";
    let bomb = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE alert [
  <!ENTITY a "aaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
  <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
  <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
]>
<alert xmlns="{ns}"><identifier>&g;</identifier></alert>"#
    );
    let xxe = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE alert [ <!ENTITY secret SYSTEM "file:///etc/passwd"> ]>
<alert xmlns="{ns}"><identifier>&secret;</identifier></alert>"#
    );
    let external_dtd = format!(
        r#"<?xml version="1.0"?>
<!DOCTYPE alert SYSTEM "http://192.0.2.1/cap.dtd">
<alert xmlns="{ns}"/>"#
    );
    let huge = changed("Concealed in a false floor", &"x".repeat(cap::MAX_BYTES));
    let deep = format!(
        "<alert xmlns=\"{ns}\">{}{}</alert>",
        "<info>".repeat(10),
        "</info>".repeat(10)
    );
    vec![
        (
            "malformed",
            changed("</headline>", "</headlin>"),
            "document",
            "malformed XML",
        ),
        (
            "cut short",
            read("01-seizure.xml")[..400].to_vec(),
            "document",
            "",
        ),
        (
            "CAP 1.1",
            changed(ns, "urn:oasis:names:tc:emergency:cap:1.1"),
            "alert",
            "namespace urn:oasis:names:tc:emergency:cap:1.1",
        ),
        (
            "no namespace",
            changed(&format!(" xmlns=\"{ns}\""), ""),
            "alert",
            "no namespace",
        ),
        (
            "missing sent",
            changed("<sent>2026-12-01T08:15:00+05:00</sent>", ""),
            "alert.sent",
            "is required",
        ),
        (
            "missing scope",
            changed("<scope>Restricted</scope>", ""),
            "alert.scope",
            "is required",
        ),
        (
            "missing event",
            changed("<event>Drug trafficking</event>", ""),
            "alert.info[0].event",
            "is required",
        ),
        (
            "entity bomb",
            bomb.into_bytes(),
            "document",
            "document type declaration",
        ),
        (
            "external entity",
            xxe.into_bytes(),
            "document",
            "document type declaration",
        ),
        (
            "external DTD",
            external_dtd.into_bytes(),
            "document",
            "document type declaration",
        ),
        (
            "undefined entity",
            changed("120 kg of heroin", "&secret;"),
            "alert.info.headline",
            "&secret;",
        ),
        ("oversized", huge, "document", "bytes long"),
        (
            "too deep",
            deep.into_bytes(),
            "alert.info.info",
            "nested deeper",
        ),
        (
            "unknown element",
            edited("01-seizure.xml", "instruction>", "instructions>"),
            "alert.info[0].instructions",
            "not a CAP 1.2 element",
        ),
        (
            "misspelt element",
            changed(
                "<incidents>TJ-2026-1182</incidents>",
                "<incident>TJ-2026-1182</incident>",
            ),
            "alert.incident",
            "not a CAP 1.2 element",
        ),
        (
            "bad severity",
            changed(
                "<severity>Severe</severity>",
                "<severity>Serious</severity>",
            ),
            "alert.info[0].severity",
            "Extreme, Severe",
        ),
        (
            "bad time",
            changed("2026-12-01T08:15:00+05:00", "yesterday"),
            "alert.sent",
            "not a CAP date and time",
        ),
        (
            "draft",
            changed("<status>Actual</status>", "<status>Draft</status>"),
            "alert.status",
            "not shared",
        ),
        (
            "ack",
            changed("<msgType>Alert</msgType>", "<msgType>Ack</msgType>"),
            "alert.msgType",
            "receipts",
        ),
        (
            "open polygon",
            changed(
                "<circle>36.727,71.611 5</circle>",
                "<polygon>36.7,71.6 36.8,71.6 36.8,71.7 36.7,71.7</polygon>",
            ),
            "alert.info[0].area[0].polygon[0]",
            "first equal to the last",
        ),
        (
            "bad circle",
            changed(
                "<circle>36.727,71.611 5</circle>",
                "<circle>36.727 71.611</circle>",
            ),
            "alert.info[0].area[0].circle[0]",
            "latitude,longitude",
        ),
        (
            "two TLP levels",
            changed(
                "<code>TLP:AMBER</code>",
                "<code>TLP:AMBER</code><code>TLP:RED</code>",
            ),
            "alert.code[1]",
            "TLP level",
        ),
        (
            "bad reference",
            changed("<incidents>", "<references>one,two</references><incidents>"),
            "alert.references",
            "sender,identifier,sent",
        ),
        (
            "no info",
            {
                let doc = String::from_utf8(read("01-seizure.xml")).expect("utf-8");
                let (start, end) = (
                    doc.find("<info>").expect("info"),
                    doc.find("</info>").expect("info") + 7,
                );
                format!("{}{}", &doc[..start], &doc[end..]).into_bytes()
            },
            "alert.info",
            "is required",
        ),
        (
            "differing info",
            changed(
                "</info>",
                "</info><info><language>ru</language><category>Security</category><event>x</event><urgency>Immediate</urgency><severity>Minor</severity><certainty>Observed</certainty><headline>y</headline></info>",
            ),
            "alert.info[1].severity",
            "one assessment",
        ),
        (
            "digest",
            edited("10-resources.xml", "2732f12a", "0000f12a"),
            "alert.info[0].resource[0].digest",
            "does not match",
        ),
        (
            "bad parameter name",
            changed(
                "<valueName>plate</valueName>",
                "<valueName>plate number</valueName>",
            ),
            "alert.info[0].parameter[2].valueName",
            "not a Liaison parameter key",
        ),
    ]
}

#[test]
fn bad_documents_are_refused_naming_the_element() {
    for (what, doc, path, words) in bad_documents() {
        let err = cap::import(&doc).expect_err(what);
        assert!(
            err.path.starts_with(path),
            "{what}: names {} ({err}); expected {path}",
            err.path
        );
        assert!(err.to_string().contains(words), "{what}: {err}");
    }
}

// The command line runs as child processes the test waits for: the broker
// needs threads of its own meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_publishes_a_cap_document_and_writes_cap_back() {
    let xmllint = xmllint();
    let broker = TestBroker::start().await;
    let _ = broker.pki.node(PUBLISHER);
    let name = cert_name(PUBLISHER);
    let tmp = tempfile::tempdir().expect("tmp");
    let certs = broker.pki.path().to_str().expect("utf-8").to_owned();
    let cli = Cli::new(tmp.path()).node(&broker.url(), &certs, &name);
    let seizure = dir().join("01-seizure.xml");
    let out = cli.ok(&["publish", "--cap", seizure.to_str().expect("utf-8")]);
    assert!(
        out.contains("0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a01"),
        "{out}"
    );
    // Flags replace the document's marking.
    let update = dir().join("03-update.xml");
    cli.ok(&[
        "publish",
        "--cap",
        update.to_str().expect("utf-8"),
        "--tlp",
        "green",
    ]);
    let doc = cli.ok(&[
        "get",
        "0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a03",
        "--format",
        "cap",
    ]);
    assert!(doc.contains("<code>TLP:GREEN</code>"), "{doc}");
    assert!(
        doc.contains("<references>urn:liaison:TJ:border-guard:ishkashim,0193a1b2-7c3d-7e4f-8a9b-0c1d2e3f4a01,2026-12-01T03:15:00+00:00</references>"),
        "the reference names the earlier alert's sender and time: {doc}"
    );
    let history = cli.ok(&["history", "--format", "cap"]);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "one document per line: {history}");
    let followed = cli.ok(&[
        "subscribe",
        "--from",
        "all",
        "--limit",
        "2",
        "--format",
        "cap",
    ]);
    assert_eq!(followed.lines().count(), 2, "{followed}");
    if let Some(x) = xmllint {
        schema_valid(x, &doc, "get --format cap");
        for l in lines
            .iter()
            .chain(followed.lines().collect::<Vec<_>>().iter())
        {
            schema_valid(x, l, "history/subscribe --format cap");
        }
    }
    // A bad document: the element named, nothing stored.
    let bad = tmp.path().join("bad.xml");
    std::fs::write(
        &bad,
        changed(
            "<severity>Severe</severity>",
            "<severity>Serious</severity>",
        ),
    )
    .expect("write");
    let refused = cli.run(&["publish", "--cap", bad.to_str().expect("utf-8")]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("alert.info[0].severity"), "{stderr}");
    assert_eq!(
        cli.ok(&["history", "--format", "json"]).lines().count(),
        2,
        "nothing more stored"
    );
}
