//! OpenBMC integration: the interface YAML and introspection XML against each other and
//! against the live service, the project's D-Bus policy on a bus configured like the system
//! bus, and the ObjectMapper's view of the service (one well-known name per object).

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use common::*;
use vmi_cert_exchange::{bus::PrivateBus, BUS_NAME, INTERFACE, OBJECT_PATH};

const MANAGER_NAME: &str = "xyz.openbmc_project.Certs.ca.authority.Manager";
const MANAGER_PATH: &str = "/xyz/openbmc_project/certs/ca";
const PLDM_NAME: &str = "xyz.openbmc_project.PLDM";
/// The pldm transport's interfaces: the manager object's, then each entry's.
const MANAGER_INTERFACES: [&str; 2] = [
    "xyz.openbmc_project.Certs.Authority",
    "xyz.openbmc_project.Collection.DeleteAll",
];
const ENTRY_INTERFACES: [&str; 3] = [
    "xyz.openbmc_project.Certs.Entry",
    "xyz.openbmc_project.Object.Delete",
    "xyz.openbmc_project.PLDM.Provider.Certs.Authority.CSR",
];
/// The uid and gid of the caller the policy must refuse (nobody/nogroup).
const NOBODY: u32 = 65534;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Introspection XML: a reader for the subset D-Bus introspection uses.

/// An XML element: name, attributes, child elements. Text is never meaningful in
/// introspection data; comments, the prolog and the DOCTYPE are skipped.
#[derive(Debug)]
struct Element {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Element>,
}

impl Element {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    fn required(&self, key: &str) -> String {
        self.attr(key)
            .unwrap_or_else(|| panic!("<{}> without {key}: {:?}", self.name, self.attrs))
            .to_string()
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn parse_xml(text: &str) -> Element {
    let mut stack: Vec<Element> = vec![Element {
        name: String::new(),
        attrs: BTreeMap::new(),
        children: Vec::new(),
    }];
    let mut rest = text;
    while let Some(start) = rest.find('<') {
        assert!(
            rest[..start].trim().is_empty(),
            "unexpected text {:?}",
            &rest[..start]
        );
        rest = &rest[start..];
        let skip_to = |rest: &str, end: &str| -> usize {
            rest.find(end)
                .unwrap_or_else(|| panic!("unterminated {:?}", &rest[..20.min(rest.len())]))
                + end.len()
        };
        if rest.starts_with("<!--") {
            rest = &rest[skip_to(rest, "-->")..];
        } else if rest.starts_with("<?") {
            rest = &rest[skip_to(rest, "?>")..];
        } else if rest.starts_with("<!") {
            rest = &rest[skip_to(rest, ">")..];
        } else if let Some(after) = rest.strip_prefix("</") {
            let end = after.find('>').expect("unterminated end tag");
            let name = after[..end].trim();
            let element = stack.pop().expect("element stack");
            assert_eq!(element.name, name, "mismatched end tag");
            stack.last_mut().expect("a parent").children.push(element);
            rest = &after[end + 1..];
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut quote = None;
            let mut end = None;
            for (i, c) in rest.char_indices().skip(1) {
                match (quote, c) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, '"' | '\'') => quote = Some(c),
                    (None, '>') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.expect("unterminated start tag");
            let mut inner = &rest[1..end];
            let self_closing = inner.ends_with('/');
            if self_closing {
                inner = &inner[..inner.len() - 1];
            }
            let name_end = inner
                .find(|c: char| c.is_whitespace())
                .unwrap_or(inner.len());
            let mut element = Element {
                name: inner[..name_end].to_string(),
                attrs: BTreeMap::new(),
                children: Vec::new(),
            };
            let mut attrs = inner[name_end..].trim_start();
            while !attrs.is_empty() {
                let eq = attrs.find('=').expect("attribute without value");
                let key = attrs[..eq].trim().to_string();
                let value_part = attrs[eq + 1..].trim_start();
                let q = value_part.chars().next().expect("attribute value");
                assert!(q == '"' || q == '\'', "unquoted attribute {key}");
                let close = value_part[1..].find(q).expect("unterminated attribute") + 1;
                element.attrs.insert(key, unescape(&value_part[1..close]));
                attrs = value_part[close + 1..].trim_start();
            }
            if self_closing {
                stack.last_mut().expect("a parent").children.push(element);
            } else {
                stack.push(element);
            }
            rest = &rest[end + 1..];
        }
    }
    assert!(rest.trim().is_empty(), "trailing text {rest:?}");
    assert_eq!(stack.len(), 1, "unclosed elements");
    let mut document = stack.pop().unwrap();
    assert_eq!(document.children.len(), 1, "one root element");
    let root = document.children.pop().unwrap();
    assert_eq!(root.name, "node");
    root
}

/// One argument. A method argument's `direction` is as written (see [`args`]); a signal
/// argument has none.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arg {
    name: Option<String>,
    signature: String,
    direction: Option<String>,
}

/// An interface as a client sees it. Members are keyed by name, so their order in the
/// document does not matter; arguments keep their order, which is part of the signature.
///
/// Annotations are left out on purpose: bmcweb, the ObjectMapper and pldmd never read them,
/// and zbus emits `org.freedesktop.DBus.Property.EmitsChangedSignal` only for non-default
/// settings, so comparing them would pin an implementation detail rather than the contract
/// (names, signatures, directions and property access, which decide whether a call works).
#[derive(Debug, Default, PartialEq, Eq)]
struct Interface {
    methods: BTreeMap<String, Vec<Arg>>,
    signals: BTreeMap<String, Vec<Arg>>,
    /// name -> (signature, access)
    properties: BTreeMap<String, (String, String)>,
}

/// An introspected object: its interfaces and the names of its direct children.
#[derive(Debug)]
struct Node {
    interfaces: BTreeMap<String, Interface>,
    children: Vec<String>,
}

/// Method arguments keep their `direction` as written: D-Bus reads a missing one as `in`, but
/// bmcweb skips an argument without `direction="in"`, so a missing one must not compare equal.
fn args(member: &Element, with_direction: bool) -> Vec<Arg> {
    member
        .children
        .iter()
        .filter(|e| e.name == "arg")
        .map(|a| Arg {
            name: a.attr("name").map(str::to_string),
            signature: a.required("type"),
            direction: with_direction
                .then(|| a.attr("direction").unwrap_or("(missing)").to_string()),
        })
        .collect()
}

fn interface(element: &Element) -> Interface {
    let mut iface = Interface::default();
    for member in &element.children {
        let name = member.required("name");
        let previous = match member.name.as_str() {
            "method" => iface.methods.insert(name.clone(), args(member, true)),
            "signal" => iface.signals.insert(name.clone(), args(member, false)),
            "property" => iface
                .properties
                .insert(
                    name.clone(),
                    (member.required("type"), member.required("access")),
                )
                .map(|_| Vec::new()),
            "annotation" => None,
            other => panic!("unexpected <{other}> in an interface"),
        };
        assert!(previous.is_none(), "{name} declared twice");
    }
    iface
}

fn node(xml: &str) -> Node {
    let root = parse_xml(xml);
    let mut interfaces = BTreeMap::new();
    let mut children = Vec::new();
    for child in &root.children {
        match child.name.as_str() {
            "interface" => {
                let name = child.required("name");
                assert!(
                    interfaces.insert(name.clone(), interface(child)).is_none(),
                    "{name} twice"
                );
            }
            // zbus may describe the whole subtree; only the child's name matters here,
            // as it does to the ObjectMapper, which introspects each child itself.
            "node" => children.push(child.required("name")),
            other => panic!("unexpected <{other}> in a node"),
        }
    }
    Node {
        interfaces,
        children,
    }
}

fn is_standard(interface: &str) -> bool {
    interface.starts_with("org.freedesktop.DBus.")
}

fn xml_file(interface: &str) -> PathBuf {
    repo()
        .join("dbus-interfaces")
        .join(format!("{interface}.xml"))
}

/// The committed description of `name`: the file holds that one interface and nothing else.
fn committed_interface(name: &str) -> Interface {
    let text = std::fs::read_to_string(xml_file(name))
        .unwrap_or_else(|e| panic!("{}: {e}", xml_file(name).display()));
    let mut n = node(&text);
    assert_eq!(n.interfaces.keys().collect::<Vec<_>>(), [name]);
    assert!(n.children.is_empty());
    n.interfaces.remove(name).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Interface YAML: a reader for the subset phosphor-dbus-interfaces files use (block mappings,
// block sequences, plain scalars, folded and literal block scalars, comments).

#[derive(Debug, Clone, PartialEq)]
enum Yaml {
    Map(Vec<(String, Yaml)>),
    Seq(Vec<Yaml>),
    Str(String),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> &str {
        match self {
            Yaml::Str(s) => s,
            other => panic!("not a scalar: {other:?}"),
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            other => panic!("not a sequence: {other:?}"),
        }
    }

    fn list(&self, key: &str) -> &[Yaml] {
        self.get(key).map(Yaml::seq).unwrap_or_default()
    }
}

/// One significant line: its indentation and its text.
struct Line {
    indent: usize,
    text: String,
}

fn parse_yaml(text: &str) -> Yaml {
    let lines: Vec<Line> = text
        .lines()
        .map(|l| {
            assert!(!l.contains('\t'), "tab in YAML: {l:?}");
            Line {
                indent: l.len() - l.trim_start().len(),
                text: l.trim().to_string(),
            }
        })
        .collect();
    let mut at = 0;
    skip_blank(&lines, &mut at);
    let indent = lines[at].indent;
    let value = block(&lines, &mut at, indent);
    skip_blank(&lines, &mut at);
    assert_eq!(at, lines.len(), "unparsed YAML from line {}", at + 1);
    value
}

fn skip_blank(lines: &[Line], at: &mut usize) {
    while *at < lines.len() && (lines[*at].text.is_empty() || lines[*at].text.starts_with('#')) {
        *at += 1;
    }
}

fn scalar(text: &str) -> String {
    let t = text.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return t[1..t.len() - 1].to_string();
        }
    }
    t.to_string()
}

/// A mapping or a sequence whose lines start at `indent`.
fn block(lines: &[Line], at: &mut usize, indent: usize) -> Yaml {
    skip_blank(lines, at);
    if lines[*at].text.starts_with("- ") || lines[*at].text == "-" {
        let mut items = Vec::new();
        loop {
            skip_blank(lines, at);
            if *at == lines.len()
                || lines[*at].indent != indent
                || !lines[*at].text.starts_with('-')
            {
                break;
            }
            let item = lines[*at].text[1..].trim_start().to_string();
            if item.contains(": ") || item.ends_with(':') {
                // "- key: value" opens a mapping indented past the dash: read it in place.
                let mut rewritten: Vec<Line> = lines[..*at].iter().map(copy_line).collect();
                rewritten.push(Line {
                    indent: indent + 2,
                    text: item,
                });
                rewritten.extend(lines[*at + 1..].iter().map(copy_line));
                items.push(mapping(&rewritten, at, indent + 2));
            } else {
                items.push(Yaml::Str(scalar(&item)));
                *at += 1;
            }
        }
        Yaml::Seq(items)
    } else {
        mapping(lines, at, indent)
    }
}

fn copy_line(l: &Line) -> Line {
    Line {
        indent: l.indent,
        text: l.text.clone(),
    }
}

fn mapping(lines: &[Line], at: &mut usize, indent: usize) -> Yaml {
    let mut entries: Vec<(String, Yaml)> = Vec::new();
    loop {
        skip_blank(lines, at);
        if *at == lines.len() || lines[*at].indent != indent || lines[*at].text.starts_with('-') {
            break;
        }
        let text = &lines[*at].text;
        let (key, rest) = match text.split_once(": ") {
            Some((k, r)) => (k.trim().to_string(), r.trim().to_string()),
            None => (
                text.strip_suffix(':')
                    .unwrap_or_else(|| panic!("line {}: not a key: {text:?}", *at + 1))
                    .to_string(),
                String::new(),
            ),
        };
        assert!(
            !entries.iter().any(|(k, _)| *k == key),
            "duplicate key {key}"
        );
        *at += 1;
        let value = if rest.is_empty() {
            skip_blank(lines, at);
            let nested = *at < lines.len()
                && (lines[*at].indent > indent
                    || (lines[*at].indent == indent && lines[*at].text.starts_with('-')));
            if nested {
                block(lines, at, lines[*at].indent)
            } else {
                Yaml::Str(String::new())
            }
        } else if rest.starts_with('>') || rest.starts_with('|') {
            let mut parts = Vec::new();
            while *at < lines.len() && (lines[*at].text.is_empty() || lines[*at].indent > indent) {
                parts.push(lines[*at].text.clone());
                *at += 1;
            }
            Yaml::Str(parts.join(" ").trim().to_string())
        } else {
            Yaml::Str(scalar(&rest))
        };
        entries.push((key, value));
    }
    Yaml::Map(entries)
}

/// The D-Bus signature of an sdbus++ type (sdbusplus docs/yaml/interface.md).
fn signature(ty: &str) -> String {
    let ty = ty.trim();
    if let Some((outer, inner)) = ty.split_once('[') {
        let inner = inner.strip_suffix(']').expect("closing bracket");
        let parts = split_top_level(inner);
        return match outer {
            "array" | "set" => format!("a{}", signature(inner)),
            "dict" => format!("a{{{}{}}}", signature(&parts[0]), signature(&parts[1])),
            "struct" => format!(
                "({})",
                parts.iter().map(|p| signature(p)).collect::<String>()
            ),
            "variant" => "v".to_string(),
            "enum" => "s".to_string(),
            other => panic!("unknown container {other}"),
        };
    }
    match ty {
        "byte" => "y",
        "boolean" => "b",
        "int16" => "n",
        "uint16" => "q",
        "int32" => "i",
        "uint32" => "u",
        "int64" | "ssize" => "x",
        "uint64" | "size" => "t",
        "double" => "d",
        "unixfd" => "h",
        "string" => "s",
        "object_path" => "o",
        "signature" => "g",
        other => panic!("unknown sdbus++ type {other}"),
    }
    .to_string()
}

fn split_top_level(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(String::new());
                continue;
            }
            _ => {}
        }
        parts.last_mut().unwrap().push(c);
    }
    parts.into_iter().map(|p| p.trim().to_string()).collect()
}

/// The interface a YAML file describes, in the same form as the XML.
fn yaml_interface(doc: &Yaml) -> Interface {
    let yaml_args = |items: &[Yaml], direction: Option<&str>| -> Vec<Arg> {
        items
            .iter()
            .map(|a| Arg {
                name: a.get("name").map(|n| n.str().to_string()),
                signature: signature(a.get("type").expect("type").str()),
                direction: direction.map(str::to_string),
            })
            .collect()
    };
    let mut iface = Interface::default();
    for m in doc.list("methods") {
        let mut a = yaml_args(m.list("parameters"), Some("in"));
        a.extend(yaml_args(m.list("returns"), Some("out")));
        iface
            .methods
            .insert(m.get("name").unwrap().str().to_string(), a);
    }
    for s in doc.list("signals") {
        iface.signals.insert(
            s.get("name").unwrap().str().to_string(),
            yaml_args(s.list("properties"), None),
        );
    }
    for p in doc.list("properties") {
        let flags: Vec<&str> = p.list("flags").iter().map(Yaml::str).collect();
        let access = if flags.contains(&"const") || flags.contains(&"readonly") {
            "read"
        } else {
            "readwrite"
        };
        iface.properties.insert(
            p.get("name").unwrap().str().to_string(),
            (
                signature(p.get("type").expect("type").str()),
                access.to_string(),
            ),
        );
    }
    iface
}

/// `yaml/xyz/openbmc_project/HMC/VMInterface.interface.yaml` -> its interface name.
fn yaml_files(dir: &Path, found: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, found);
        } else if let Some(stem) = path
            .to_str()
            .and_then(|p| p.strip_suffix(".interface.yaml"))
        {
            let relative = Path::new(stem)
                .strip_prefix(repo().join("yaml"))
                .unwrap()
                .to_str()
                .unwrap()
                .replace('/', ".");
            found.push((relative, path));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Live service helpers.

async fn introspect(conn: &zbus::Connection, destination: &str, path: &str) -> Node {
    let proxy = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(destination.to_string())
        .path(path.to_string())
        .build()
        .await
        .unwrap();
    node(&proxy.introspect().await.unwrap())
}

/// Walks `destination`'s tree from `/` the way the ObjectMapper does: introspect, then each
/// child. Returns every path with its non-standard interfaces.
async fn walk(conn: &zbus::Connection, destination: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut found = BTreeMap::new();
    let mut pending = vec!["/".to_string()];
    while let Some(path) = pending.pop() {
        let n = introspect(conn, destination, &path).await;
        found.insert(
            path.clone(),
            n.interfaces
                .keys()
                .filter(|i| !is_standard(i))
                .cloned()
                .collect(),
        );
        for child in n.children {
            let base = if path == "/" { "" } else { path.as_str() };
            pending.push(format!("{base}/{child}"));
        }
    }
    found
}

/// The simulated host (pldmd + hypervisor), killed on drop.
struct Host {
    _child: tokio::process::Child,
}

async fn start_host(
    bus: &PrivateBus,
    conn: &zbus::Connection,
    dir: &Path,
    fault: &str,
) -> (Host, PathBuf) {
    let root_cert = dir.join("RootCert");
    let mut child = tokio::process::Command::new(BIN)
        .args(["simulate-host", "--address", bus.address(), "--state-dir"])
        .arg(dir.join("host"))
        .arg("--root-cert-file")
        .arg(&root_cert)
        .args(["--fault", fault])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("host.log")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::select! {
        r = vmi_cert_exchange::bus::wait_for_name(conn, PLDM_NAME) => r.unwrap(),
        s = child.wait() => panic!(
            "simulate-host exited ({s:?}): {}",
            std::fs::read_to_string(dir.join("host.log")).unwrap_or_default()
        ),
    }
    (Host { _child: child }, root_cert)
}

/// The service with the production transport, against a simulated host.
async fn start_pldm_service(
    bus: &PrivateBus,
    conn: &zbus::Connection,
    dir: &Path,
    root_cert: &Path,
) -> Service {
    let state = dir.join("state");
    let svc = Service::start(
        bus,
        conn,
        &[
            "--transport",
            "pldm",
            "--state-dir",
            state.to_str().unwrap(),
            "--root-cert-file",
            root_cert.to_str().unwrap(),
        ],
    )
    .await;
    vmi_cert_exchange::bus::wait_for_name(conn, MANAGER_NAME)
        .await
        .unwrap();
    svc
}

fn csr(dir: &Path, cn: &str) -> String {
    let key = genpkey(dir, cn, "p256");
    req(&key, &format!("/CN={cn}"), &[])
}

// ---------------------------------------------------------------------------------------------
// The files against each other.

#[test]
fn interface_xml_files_describe_one_interface_each_with_explicit_directions() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo().join("dbus-interfaces")).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(name) = file.strip_suffix(".xml") {
            names.push(name.to_string());
            // bmcweb converts JSON arguments by the introspected `in` signatures: every
            // method argument says its direction.
            let root = parse_xml(&std::fs::read_to_string(&path).unwrap());
            for iface in &root.children {
                for method in iface.children.iter().filter(|m| m.name == "method") {
                    for arg in &method.children {
                        assert!(
                            matches!(arg.attr("direction"), Some("in" | "out")),
                            "{file}: {} argument {:?} has no direction",
                            method.required("name"),
                            arg.attr("name")
                        );
                    }
                }
            }
            committed_interface(name);
        }
    }
    names.sort();
    let mut expected: Vec<&str> = [INTERFACE]
        .into_iter()
        .chain(MANAGER_INTERFACES)
        .chain(ENTRY_INTERFACES)
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn yaml_agrees_with_the_interface_xml() {
    let mut files = Vec::new();
    yaml_files(&repo().join("yaml"), &mut files);
    // The Certs interfaces come from phosphor-dbus-interfaces; ours is the only one defined here.
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [INTERFACE]
    );
    for (name, path) in files {
        let doc = parse_yaml(&std::fs::read_to_string(&path).unwrap());
        assert!(!doc.get("description").unwrap().str().is_empty());
        assert_eq!(yaml_interface(&doc), committed_interface(&name), "{name}");
    }
    let doc = parse_yaml(
        &std::fs::read_to_string(
            repo().join("yaml/xyz/openbmc_project/HMC/VMInterface.interface.yaml"),
        )
        .unwrap(),
    );
    let sign = &doc.list("methods")[0];
    assert_eq!(sign.get("name").unwrap().str(), "SignCSR");
    let errors: Vec<&str> = sign.list("errors").iter().map(Yaml::str).collect();
    assert_eq!(
        errors,
        [
            "InvalidArgument",
            "NotAllowed",
            "Unavailable",
            "TooManyResources",
            "NoCACertificate",
            "InternalFailure"
        ]
        .map(|e| format!("{}.{e}", vmi_cert_exchange::error::ERROR_PREFIX))
    );
}

#[test]
fn yaml_reader_handles_the_forms_phosphor_files_use() {
    let doc = parse_yaml(
        "# comment\ndescription: >\n    two\n    lines\nproperties:\n    - name: Status\n      type: enum[self.State]\n      default: Pending\n      flags:\n          - const\n    - name: Map\n      type: dict[string, array[struct[uint32, object_path]]]\nenumerations:\n  - name: State\n    values:\n      - name: \"Pending\"\n",
    );
    assert_eq!(doc.get("description").unwrap().str(), "two lines");
    let iface = yaml_interface(&doc);
    assert_eq!(
        iface.properties,
        BTreeMap::from([
            (
                "Map".to_string(),
                ("a{sa(uo)}".to_string(), "readwrite".to_string())
            ),
            ("Status".to_string(), ("s".to_string(), "read".to_string())),
        ])
    );
    assert_eq!(
        doc.list("enumerations")[0].list("values")[0]
            .get("name")
            .unwrap()
            .str(),
        "Pending"
    );
}

// ---------------------------------------------------------------------------------------------
// The files against the live service.

#[tokio::test(flavor = "multi_thread")]
async fn emulator_service_serves_exactly_the_committed_interface() {
    let dir = tempfile::tempdir().unwrap();
    let (_bus, conn, _svc) = emulator_service(dir.path(), &[]).await;
    let mut live = introspect(&conn, BUS_NAME, OBJECT_PATH).await;
    let ours: Vec<&String> = live.interfaces.keys().filter(|i| !is_standard(i)).collect();
    assert_eq!(ours, [INTERFACE]);
    assert_eq!(
        live.interfaces.remove(INTERFACE).unwrap(),
        committed_interface(INTERFACE)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pldm_transport_serves_exactly_the_committed_interfaces() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bus = private_bus();
    let conn = connect(&bus).await;
    // A host that never answers keeps the entry Pending while it is introspected.
    let (_host, root_cert) = start_host(&bus, &conn, d, "silent").await;
    let _svc = start_pldm_service(&bus, &conn, d, &root_cert).await;

    let mut hmc = introspect(&conn, BUS_NAME, OBJECT_PATH).await;
    assert_eq!(
        hmc.interfaces.remove(INTERFACE).unwrap(),
        committed_interface(INTERFACE)
    );

    let mut manager = introspect(&conn, MANAGER_NAME, MANAGER_PATH).await;
    let ours: Vec<&str> = manager
        .interfaces
        .keys()
        .filter(|i| !is_standard(i))
        .map(String::as_str)
        .collect();
    assert_eq!(ours, MANAGER_INTERFACES);
    assert!(manager
        .interfaces
        .contains_key("org.freedesktop.DBus.ObjectManager"));
    for name in MANAGER_INTERFACES {
        assert_eq!(
            manager.interfaces.remove(name).unwrap(),
            committed_interface(name),
            "{name}"
        );
    }

    let reply = conn
        .call_method(
            Some(MANAGER_NAME),
            MANAGER_PATH,
            Some("xyz.openbmc_project.Certs.Authority"),
            "SignCSR",
            &(csr(d, "introspected"),),
        )
        .await
        .unwrap();
    let entry: zbus::OwnedObjectPath = reply.body().deserialize().unwrap();
    assert_eq!(entry.as_str(), "/xyz/openbmc_project/certs/ca/entry/1");
    let mut live = introspect(&conn, MANAGER_NAME, entry.as_str()).await;
    let ours: Vec<&str> = live
        .interfaces
        .keys()
        .filter(|i| !is_standard(i))
        .map(String::as_str)
        .collect();
    assert_eq!(ours, ENTRY_INTERFACES);
    for name in ENTRY_INTERFACES {
        assert_eq!(
            live.interfaces.remove(name).unwrap(),
            committed_interface(name),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ObjectMapper friendliness.

#[tokio::test(flavor = "multi_thread")]
async fn hmc_object_is_reached_under_exactly_one_well_known_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bus = private_bus();
    let conn = connect(&bus).await;
    // The production transport: the HMC connection and the Certs manager connection. It
    // needs no pldmd to start (requests fail with Unavailable until pldmd is there).
    let _svc = start_pldm_service(&bus, &conn, d, &d.join("RootCert")).await;

    let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
    // The names the ObjectMapper indexes.
    let mut names: Vec<String> = dbus
        .list_names()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.to_string())
        .filter(|n| !n.starts_with(':') && !n.starts_with("org.freedesktop"))
        .collect();
    names.sort();
    assert_eq!(names, [MANAGER_NAME, BUS_NAME]);

    let mut serving_hmc = Vec::new();
    for name in &names {
        let tree = walk(&conn, name).await;
        if tree.contains_key(OBJECT_PATH) {
            serving_hmc.push(name.clone());
        }
        if name == BUS_NAME {
            // From / downward the walk reaches the object, and nothing else of ours.
            let with_interfaces: BTreeMap<&String, &BTreeSet<String>> =
                tree.iter().filter(|(_, i)| !i.is_empty()).collect();
            assert_eq!(
                with_interfaces,
                BTreeMap::from([(
                    &OBJECT_PATH.to_string(),
                    &BTreeSet::from([INTERFACE.to_string()])
                )])
            );
        }
        if name == MANAGER_NAME {
            assert_eq!(
                tree.get(MANAGER_PATH).unwrap(),
                &BTreeSet::from(MANAGER_INTERFACES.map(String::from))
            );
        }
    }
    assert_eq!(serving_hmc, [BUS_NAME]);
}

// ---------------------------------------------------------------------------------------------
// The D-Bus policy.

/// The `<policy context="default">` element of the system bus configuration that dbus-daemon
/// installs: method calls and name ownership are refused unless a policy file allows them.
fn system_default_context() -> String {
    let path = "/usr/share/dbus-1/system.conf";
    let conf = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e} (package dbus-system-bus-common, see .ci/run)"));
    let start = conf
        .find("<policy context=\"default\">")
        .expect("a default context");
    let end = start + conf[start..].find("</policy>").unwrap() + "</policy>".len();
    conf[start..end].to_string()
}

/// `dbus-send` as `uid` (root, or nobody), with the reply printed.
fn dbus_send(bus: &PrivateBus, uid: u32, args: &[&str]) -> Output {
    let mut cmd = Command::new("dbus-send");
    cmd.arg(format!("--bus={}", bus.address()))
        .arg("--print-reply")
        .args(args)
        .stdin(Stdio::null());
    if uid != 0 {
        // std drops the supplementary groups when a root parent changes the uid.
        cmd.uid(uid).gid(uid);
    }
    cmd.output().expect("dbus-send (package dbus-bin)")
}

fn request_name(bus: &PrivateBus, uid: u32, name: &str) -> Output {
    dbus_send(
        bus,
        uid,
        &[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.RequestName",
            &format!("string:{name}"),
            // DBUS_NAME_FLAG_DO_NOT_QUEUE
            "uint32:4",
        ],
    )
}

fn assert_access_denied(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: {out:?}");
    assert!(
        stderr.starts_with("Error org.freedesktop.DBus.Error.AccessDenied: "),
        "{what}: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{what}");
}

/// The reply body as dbus-send prints it, after the "method return ..." header line.
fn reply_body(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let (header, body) = stdout.split_once('\n').unwrap();
    assert!(header.starts_with("method return "), "{what}: {header}");
    body.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_root_may_own_the_names_and_call_the_methods() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let policy = repo().join("meson-wrapper/dist/xyz.openbmc_project.HMC.VMInterface.conf");
    assert!(policy.is_file());
    // The system bus's default context, pldmd's own allowance (it ships its own policy on a
    // BMC), then the project's policy file, as the system bus includes system.d.
    let bus = PrivateBus::start_with_policy(&format!(
        r#"{}
  <policy user="root">
    <allow own="{PLDM_NAME}"/>
    <allow send_destination="{PLDM_NAME}"/>
  </policy>
  <include>{}</include>"#,
        system_default_context(),
        policy.display()
    ))
    .expect("dbus-daemon (see .ci/run) accepts the system default context and the project's policy file");
    // The socket directory is private to root; the refused caller has to reach the socket.
    std::fs::set_permissions(bus.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();

    for name in [BUS_NAME, MANAGER_NAME] {
        assert_access_denied(
            &request_name(&bus, NOBODY, name),
            &format!("nobody owns {name}"),
        );
        // DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER; the name goes again when dbus-send exits.
        assert_eq!(
            reply_body(&request_name(&bus, 0, name), &format!("root owns {name}")),
            "   uint32 1\n"
        );
    }

    let conn = connect(&bus).await;
    let (_host, root_cert) = start_host(&bus, &conn, d, "none").await;
    let _svc = start_pldm_service(&bus, &conn, d, &root_cert).await;

    let request = csr(d, "policy");
    let sign = [
        format!("--dest={BUS_NAME}"),
        OBJECT_PATH.to_string(),
        format!("{INTERFACE}.SignCSR"),
        format!("string:{request}"),
    ];
    let sign: Vec<&str> = sign.iter().map(String::as_str).collect();
    assert_access_denied(&dbus_send(&bus, NOBODY, &sign), "nobody calls SignCSR");
    let delete_all = [
        &format!("--dest={MANAGER_NAME}") as &str,
        MANAGER_PATH,
        "xyz.openbmc_project.Collection.DeleteAll.DeleteAll",
    ];
    assert_access_denied(
        &dbus_send(&bus, NOBODY, &delete_all),
        "nobody calls DeleteAll",
    );
    assert_access_denied(
        &dbus_send(
            &bus,
            NOBODY,
            &[
                &format!("--dest={BUS_NAME}"),
                OBJECT_PATH,
                "org.freedesktop.DBus.Introspectable.Introspect",
            ],
        ),
        "nobody introspects",
    );

    // Root gets the chain; the same CSR again (from the result cache) over zbus gives the
    // exact bytes dbus-send printed.
    let printed = reply_body(&dbus_send(&bus, 0, &sign), "root calls SignCSR");
    let chain = sign_csr(&conn, &request).await;
    check_chain_with_openssl(d, &chain, &d.join("policy.key"));
    assert_eq!(printed, format!("   string \"{chain}\"\n"));
    assert_eq!(
        reply_body(&dbus_send(&bus, 0, &delete_all), "root calls DeleteAll"),
        ""
    );
}

async fn sign_csr(conn: &zbus::Connection, csr: &str) -> String {
    sign(conn, csr)
        .await
        .unwrap_or_else(|(name, message)| panic!("{name}: {message}"))
}
