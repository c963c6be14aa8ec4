//! A bounded reader of CAP documents into a small element tree, and the
//! escaping the writer needs. Built on quick-xml, which neither expands
//! entities nor fetches anything: a document type declaration (the way
//! entity-expansion bombs and external entities come in) is refused
//! outright, as is any entity other than XML's five predefined ones, a
//! document over the size limit, elements nested too deep or too many.

use std::borrow::Cow;

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;

use super::CapError;

/// The CAP 1.2 namespace.
pub const NS: &str = "urn:oasis:names:tc:emergency:cap:1.2";
/// Namespaces CAP 1.2 lets an alert carry (XML signature and encryption):
/// skipped, not checked.
const SKIPPED: [&str; 2] = [
    "http://www.w3.org/2000/09/xmldsig#",
    "http://www.w3.org/2001/04/xmlenc#",
];

/// The largest document read (attachments travel inside, in base64).
pub const MAX_BYTES: usize = 1024 * 1024;
const MAX_DEPTH: usize = 8;
const MAX_ELEMENTS: usize = 20_000;

/// One element: its local name, its text and its child elements.
#[derive(Debug, Default)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
    /// The line it starts on, for messages.
    pub line: usize,
}

impl Element {
    /// Child elements named `name`.
    pub fn all<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a Element> + use<'a, 'n> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The one child named `name`, if any; more than one is an error.
    pub fn one(&self, path: &str, name: &str) -> Result<Option<&Element>, CapError> {
        let mut all = self.all(name);
        let first = all.next();
        match all.next() {
            Some(second) => Err(CapError::at(
                format!("{path}.{name}"),
                second.line,
                "appears more than once",
            )),
            None => Ok(first),
        }
    }

    /// The text of the one child named `name`, trimmed, if any.
    pub fn text_of(&self, path: &str, name: &str) -> Result<Option<&str>, CapError> {
        Ok(self.one(path, name)?.map(|e| e.text.trim()))
    }

    /// As [`Element::text_of`], required and not empty.
    pub fn required(&self, path: &str, name: &str) -> Result<&str, CapError> {
        match self.text_of(path, name)? {
            Some(t) if !t.is_empty() => Ok(t),
            Some(_) => Err(CapError::at(
                format!("{path}.{name}"),
                self.line,
                "is empty",
            )),
            None => Err(CapError::at(
                format!("{path}.{name}"),
                self.line,
                "is required",
            )),
        }
    }
}

/// Reads `doc` into its root element, which must be `<alert>` in the CAP
/// 1.2 namespace.
///
/// # Errors
/// What is wrong, with the line: malformed XML, a DTD or an undefined
/// entity, another namespace, the limits.
pub fn parse(doc: &[u8]) -> Result<Element, CapError> {
    if doc.len() > MAX_BYTES {
        return Err(CapError::document(format!(
            "is {} bytes long; at most {MAX_BYTES} are read",
            doc.len()
        )));
    }
    let text =
        std::str::from_utf8(doc).map_err(|e| CapError::document(format!("is not UTF-8 ({e})")))?;
    let mut reader = NsReader::from_str(text);
    reader.config_mut().check_end_names = true;
    let line_at = |pos: u64| text[..(pos as usize).min(text.len())].matches('\n').count() + 1;
    let mut stack: Vec<(Element, String)> = Vec::new();
    let mut root = None;
    let mut elements = 0usize;
    // Depth of a skipped subtree (a signature), 0 when not skipping.
    let mut skipping = 0usize;
    loop {
        let at = reader.buffer_position();
        let (ns, event) = match reader.read_resolved_event() {
            Ok((ResolveResult::Bound(n), event)) => (n.as_ref().to_owned(), event),
            Ok((_, event)) => (String::new(), event),
            Err(e) => {
                let line = line_at(reader.error_position());
                return Err(CapError::at(
                    "document",
                    line,
                    format!("malformed XML: {e}"),
                ));
            }
        };
        let line = line_at(at);
        let path = || {
            stack
                .iter()
                .map(|(_, p)| p.as_str())
                .next_back()
                .unwrap_or("document")
                .to_owned()
        };
        match event {
            Event::DocType(_) => {
                return Err(CapError::at(
                    "document",
                    line,
                    "has a document type declaration (<!DOCTYPE>); CAP documents carry none, and none is read (entities are neither expanded nor fetched)",
                ));
            }
            Event::Decl(d) => {
                if let Some(Ok(enc)) = d.encoding()
                    && !enc.eq_ignore_ascii_case("utf-8")
                {
                    return Err(CapError::at(
                        "document",
                        line,
                        format!("declares encoding {enc}; only UTF-8 is read"),
                    ));
                }
            }
            Event::Start(_) | Event::Empty(_) if skipping > 0 => {
                if matches!(event, Event::Start(_)) {
                    skipping += 1;
                }
            }
            Event::End(_) if skipping > 0 => skipping -= 1,
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_owned();
                let here = match stack.last() {
                    Some((_, p)) => format!("{p}.{local}"),
                    None => local.clone(),
                };
                let namespace = ns;
                if namespace != NS {
                    if !stack.is_empty() && SKIPPED.contains(&namespace.as_str()) {
                        if matches!(event, Event::Start(_)) {
                            skipping = 1;
                        }
                        continue;
                    }
                    let found = if namespace.is_empty() {
                        "no namespace".to_owned()
                    } else {
                        format!("namespace {namespace}")
                    };
                    return Err(CapError::at(
                        here,
                        line,
                        format!("is in {found}; CAP 1.2 elements are in {NS}"),
                    ));
                }
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(CapError::at(
                        here,
                        line,
                        format!("more than {MAX_ELEMENTS} elements"),
                    ));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(CapError::at(
                        here,
                        line,
                        format!("nested deeper than {MAX_DEPTH} elements"),
                    ));
                }
                if stack.is_empty() && (root.is_some() || local != "alert") {
                    return Err(CapError::at(
                        here,
                        line,
                        "the document's root must be one <alert>",
                    ));
                }
                let element = Element {
                    name: local,
                    line,
                    ..Element::default()
                };
                if matches!(event, Event::Empty(_)) {
                    close(&mut stack, &mut root, element);
                } else {
                    stack.push((element, here));
                }
            }
            Event::End(_) => {
                let (element, _) = stack.pop().ok_or_else(|| {
                    CapError::at(
                        "document",
                        line,
                        "malformed XML: an end tag without a start",
                    )
                })?;
                close(&mut stack, &mut root, element);
            }
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) if skipping > 0 => {}
            Event::Text(t) => append(&mut stack, &t.xml10_content()),
            Event::CData(t) => append(&mut stack, &t.xml10_content()),
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => match r.into_inner().as_ref() {
                        "lt" => "<".into(),
                        "gt" => ">".into(),
                        "amp" => "&".into(),
                        "apos" => "'".into(),
                        "quot" => "\"".into(),
                        other => {
                            return Err(CapError::at(
                                path(),
                                line,
                                format!(
                                    "uses the entity &{other};, which is not defined (only XML's five predefined entities are read)"
                                ),
                            ));
                        }
                    },
                    Err(e) => {
                        return Err(CapError::at(
                            path(),
                            line,
                            format!("a character reference is not valid: {e}"),
                        ));
                    }
                };
                append(&mut stack, &c);
            }
            Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if let Some((_, p)) = stack.last() {
        return Err(CapError::document(format!("ends inside <{p}>")));
    }
    root.ok_or_else(|| CapError::document("holds no <alert>"))
}

fn close(stack: &mut [(Element, String)], root: &mut Option<Element>, element: Element) {
    match stack.last_mut() {
        Some((parent, _)) => parent.children.push(element),
        None => *root = Some(element),
    }
}

fn append(stack: &mut [(Element, String)], text: &str) {
    // Text outside the root (whitespace) belongs to nothing.
    if let Some((element, _)) = stack.last_mut() {
        element.text.push_str(text);
    }
}

/// Escapes `s` for element content; with `one_line`, line breaks and
/// tabs become character references so that a document fits on one line.
pub fn escape(s: &str, one_line: bool) -> Cow<'_, str> {
    let special =
        |c: char| matches!(c, '<' | '>' | '&') || (one_line && matches!(c, '\n' | '\r' | '\t'));
    if !s.chars().any(special) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' if one_line => out.push_str("&#10;"),
            '\r' if one_line => out.push_str("&#13;"),
            '\t' if one_line => out.push_str("&#9;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}
