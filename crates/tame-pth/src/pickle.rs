//! A pickle reader that builds a passive value tree and never runs code.
//!
//! Calls (`REDUCE`, `NEWOBJ`) and `BUILD` are recorded as data; only
//! `collections.OrderedDict` is interpreted, because state dicts are made of it.
//! Every length is checked against the bytes left, nesting, the stack and the memo
//! are capped, and the objects decoded are counted (a shared object at each use), so
//! corrupt input ends in an error rather than a panic, a huge allocation or a long loop.

use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{short, ErrorKind};

/// Deepest nesting accepted; real checkpoints stay far below it.
const MAX_DEPTH: u16 = 200;
/// Values and marks on the stack at once: real pickles keep at most a few thousand
/// (protocol 2 appends and sets items in batches of 1000).
const MAX_STACK: usize = 1 << 20;
/// Memo entries: about ten per tensor in a state dict.
const MAX_MEMO: usize = 1 << 20;
/// Objects decoded, counting a shared object each time it is used (so that a tree built
/// by reusing memoised parts, walked or copied later, stays this small) and a string as
/// one object per [`STRING_BYTES_PER_OBJECT`] bytes. A state dict takes about 35 a
/// tensor (ResNet-50: about 11000); each object costs at most about 100 bytes of memory.
const MAX_OBJECTS: u64 = 1 << 22;
const STRING_BYTES_PER_OBJECT: usize = 16;

/// A pickled value.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer too wide for `i64`: little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    /// Binary data, kept only as its length: no tensor reading needs its content.
    Bytes(usize),
    Global(Rc<Global>),
    Tuple(Node),
    List(Node),
    /// Keys and values interleaved, in insertion order.
    Dict(Node),
    /// `callable(*args)`, never performed: items are `[callable, args]`.
    Call(Node),
    /// `obj.__setstate__(state)`, never performed: items are `[obj, state]`.
    Build(Node),
    /// A persistent id: items are `[id]`.
    PersId(Node),
}

/// A global reference (`module.name`) such as a class or function.
#[derive(Debug)]
pub(crate) struct Global {
    pub module: String,
    pub name: String,
}

/// Shared children of a compound value, copied on write.
#[derive(Clone, Debug)]
pub(crate) struct Node(Rc<NodeData>);

#[derive(Clone, Debug)]
struct NodeData {
    depth: u16,
    /// This node and everything below it, as counted against [`MAX_OBJECTS`].
    weight: u64,
    items: Vec<Value>,
}

impl Node {
    fn new(items: Vec<Value>) -> Result<Self, ErrorKind> {
        let depth = child_depth(items.iter())?;
        let weight = weight(&items).saturating_add(1);
        Ok(Self(Rc::new(NodeData {
            depth,
            weight,
            items,
        })))
    }

    pub(crate) fn items(&self) -> &[Value] {
        &self.0.items
    }

    /// Appends in place, copying first if the memo shares this node.
    fn extend(&mut self, values: Vec<Value>, budget: &mut Budget) -> Result<(), ErrorKind> {
        if Rc::strong_count(&self.0) > 1 {
            budget.spend(self.0.items.len() as u64)?;
        }
        let depth = child_depth(values.iter())?;
        let data = Rc::make_mut(&mut self.0);
        data.depth = data.depth.max(depth);
        data.weight = data.weight.saturating_add(weight(&values));
        data.items.extend(values);
        Ok(())
    }
}

fn weight(items: &[Value]) -> u64 {
    items
        .iter()
        .fold(0, |sum: u64, v| sum.saturating_add(v.weight()))
}

fn child_depth<'a>(items: impl Iterator<Item = &'a Value>) -> Result<u16, ErrorKind> {
    let depth = items.map(Value::depth).max().unwrap_or(0) + 1;
    if depth > MAX_DEPTH {
        return Err(ErrorKind::Malformed(format!(
            "pickle nesting deeper than {MAX_DEPTH}"
        )));
    }
    Ok(depth)
}

impl Value {
    fn node(&self) -> Option<&Node> {
        match self {
            Value::Tuple(n)
            | Value::List(n)
            | Value::Dict(n)
            | Value::Call(n)
            | Value::Build(n)
            | Value::PersId(n) => Some(n),
            _ => None,
        }
    }

    fn depth(&self) -> u16 {
        self.node().map_or(0, |n| n.0.depth)
    }

    /// The objects this value counts as: see [`MAX_OBJECTS`].
    fn weight(&self) -> u64 {
        let bytes = match self {
            Value::Str(s) => s.len(),
            Value::BigInt(b) => b.len(),
            Value::Global(g) => g.module.len() + g.name.len(),
            _ => return self.node().map_or(1, |n| n.0.weight),
        };
        1 + (bytes / STRING_BYTES_PER_OBJECT) as u64
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub(crate) fn as_tuple(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(n) => Some(n.items()),
            _ => None,
        }
    }

    pub(crate) fn as_global(&self) -> Option<&Global> {
        match self {
            Value::Global(g) => Some(g),
            _ => None,
        }
    }

    /// `(callable, args)` of a recorded call.
    pub(crate) fn as_call(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Call(n) => pair(n),
            _ => None,
        }
    }

    /// `(object, state)` of a recorded `BUILD`.
    pub(crate) fn as_build(&self) -> Option<(&Value, &Value)> {
        match self {
            Value::Build(n) => pair(n),
            _ => None,
        }
    }

    /// The key/value pairs of a dict, in insertion order, duplicates included.
    pub(crate) fn dict_pairs(&self) -> Option<impl Iterator<Item = (&Value, &Value)>> {
        match self {
            Value::Dict(n) => Some(n.items().chunks_exact(2).map(|kv| (&kv[0], &kv[1]))),
            _ => None,
        }
    }

    /// A short description for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("the bool {b}"),
            Value::Int(i) => format!("the int {i}"),
            Value::BigInt(_) => "a big int".into(),
            Value::Float(f) => format!("the float {f}"),
            Value::Str(s) => format!("the string {:?}", short(s)),
            Value::Bytes(n) => format!("{n} bytes"),
            Value::Global(g) => format!("the global {}.{}", short(&g.module), short(&g.name)),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Call(n) => match pair(n).and_then(|(c, _)| c.as_global()) {
                Some(g) => format!("a call to {}.{}", short(&g.module), short(&g.name)),
                None => "a call".into(),
            },
            Value::Build(_) => "an object with state".into(),
            Value::PersId(_) => "a persistent id".into(),
        }
    }
}

fn pair(n: &Node) -> Option<(&Value, &Value)> {
    match n.items() {
        [a, b] => Some((a, b)),
        _ => None,
    }
}

/// The objects still allowed: see [`MAX_OBJECTS`]. Copying a shared list or dict to
/// change it counts each item copied.
struct Budget(u64);

impl Budget {
    fn spend(&mut self, n: u64) -> Result<(), ErrorKind> {
        self.0 = self.0.checked_sub(n).ok_or_else(|| {
            ErrorKind::PickleLimit(format!("expands to more than {MAX_OBJECTS} objects"))
        })?;
        Ok(())
    }
}

/// The result of reading one pickle.
pub(crate) struct Loaded {
    pub value: Value,
    /// Every persistent id met, in order (the storages of tensors).
    pub persistent_ids: Vec<Value>,
}

/// Reads one pickle starting at `*pos` in `data`; on success `*pos` is just past its `STOP`.
pub(crate) fn load(data: &[u8], pos: &mut usize) -> Result<Loaded, ErrorKind> {
    let mut m = Machine {
        data,
        start: *pos,
        pos: *pos,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget: Budget(MAX_OBJECTS),
        persistent_ids: Vec::new(),
    };
    let value = m.run()?;
    *pos = m.pos;
    Ok(Loaded {
        value,
        persistent_ids: m.persistent_ids,
    })
}

struct Machine<'a> {
    data: &'a [u8],
    start: usize,
    pos: usize,
    stack: Vec<Value>,
    /// Stack lengths at each `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    budget: Budget,
    persistent_ids: Vec<Value>,
}

fn malformed(msg: &str) -> ErrorKind {
    ErrorKind::Malformed(format!("pickle: {msg}"))
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ErrorKind> {
        let bytes = self
            .data
            .get(self.pos..)
            .and_then(|rest| rest.get(..n))
            .ok_or(ErrorKind::Truncated("pickle stream"))?;
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ErrorKind> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ErrorKind> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, ErrorKind> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A length prefix of `N` bytes, checked against the bytes left.
    fn len<const N: usize>(&mut self) -> Result<usize, ErrorKind> {
        let mut wide = [0u8; 8];
        wide[..N].copy_from_slice(&self.array::<N>()?);
        let len = u64::from_le_bytes(wide);
        if len > (self.data.len() - self.pos) as u64 {
            return Err(ErrorKind::Truncated("pickle stream"));
        }
        Ok(len as usize)
    }

    fn line(&mut self) -> Result<String, ErrorKind> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(ErrorKind::Truncated("pickle stream"))?;
        let line = self.take(end + 1)?;
        let line = std::str::from_utf8(&line[..end]).map_err(|_| malformed("non-UTF-8 name"))?;
        Ok(line.to_string())
    }

    fn string(&mut self, len: usize) -> Result<Value, ErrorKind> {
        let bytes = self.take(len)?;
        let s = std::str::from_utf8(bytes).map_err(|_| malformed("invalid UTF-8 string"))?;
        Ok(Value::Str(s.into()))
    }

    /// A Python 2 `str`: text when it is valid UTF-8, bytes otherwise.
    fn py2_string(&mut self, len: usize) -> Result<Value, ErrorKind> {
        let bytes = self.take(len)?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(s) => Value::Str(s.into()),
            Err(_) => Value::Bytes(bytes.len()),
        })
    }

    fn long(&mut self, len: usize) -> Result<Value, ErrorKind> {
        let bytes = self.take(len)?;
        if bytes.len() > 8 {
            return Ok(Value::BigInt(bytes.into()));
        }
        // Sign-extend the little-endian two's complement bytes.
        let fill = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let mut wide = [fill; 8];
        wide[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(wide)))
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value, ErrorKind> {
        if self.stack.len() <= self.floor() {
            return Err(malformed("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| malformed("stack underflow"))
    }

    fn top(&mut self) -> Result<&mut Value, ErrorKind> {
        if self.stack.len() <= self.floor() {
            return Err(malformed("stack underflow"));
        }
        self.stack
            .last_mut()
            .ok_or_else(|| malformed("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, ErrorKind> {
        let mark = self.marks.pop().ok_or_else(|| malformed("no MARK"))?;
        Ok(self.stack.split_off(mark))
    }

    /// Pushes a value new to the pickle, counting it alone: the parts of a compound one
    /// were counted when they were pushed.
    fn push(&mut self, v: Value) -> Result<(), ErrorKind> {
        let cost = if v.node().is_some() { 1 } else { v.weight() };
        self.push_counted(v, cost)
    }

    /// Pushes one more use of a value, counting it whole: whatever walks the result
    /// meets it once more.
    fn push_shared(&mut self, v: Value) -> Result<(), ErrorKind> {
        let cost = v.weight();
        self.push_counted(v, cost)
    }

    fn push_counted(&mut self, v: Value, cost: u64) -> Result<(), ErrorKind> {
        self.check_stack()?;
        self.budget.spend(cost)?;
        self.stack.push(v);
        Ok(())
    }

    fn check_stack(&self) -> Result<(), ErrorKind> {
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(ErrorKind::PickleLimit(format!(
                "stack exceeds {MAX_STACK} entries"
            )));
        }
        Ok(())
    }

    fn push_node(&mut self, make: fn(Node) -> Value, items: Vec<Value>) -> Result<(), ErrorKind> {
        let node = Node::new(items)?;
        self.push(make(node))
    }

    fn memo_get(&mut self, id: u32) -> Result<(), ErrorKind> {
        let value = self
            .memo
            .get(&id)
            .ok_or_else(|| malformed("memo key missing"))?
            .clone();
        self.push_shared(value)
    }

    fn memo_put(&mut self, id: u32) -> Result<(), ErrorKind> {
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&id) {
            return Err(ErrorKind::PickleLimit(format!(
                "memo exceeds {MAX_MEMO} entries"
            )));
        }
        let value = self.top()?.clone();
        self.memo.insert(id, value);
        Ok(())
    }

    /// Appends to the list or dict on top of the stack.
    fn extend_top(&mut self, values: Vec<Value>, dict: bool) -> Result<(), ErrorKind> {
        if dict && values.len() % 2 != 0 {
            return Err(malformed("odd number of dict items"));
        }
        let floor = self.floor();
        if self.stack.len() <= floor {
            return Err(malformed("stack underflow"));
        }
        match (self.stack.last_mut(), dict) {
            (Some(Value::Dict(node)), true) | (Some(Value::List(node)), false) => {
                node.extend(values, &mut self.budget)
            }
            _ => Err(malformed(if dict {
                "SETITEM on a non-dict"
            } else {
                "APPEND on a non-list"
            })),
        }
    }

    /// `callable(*args)` as data; an `OrderedDict` becomes a plain dict.
    fn call(&mut self, callable: Value, args: Value) -> Result<(), ErrorKind> {
        let is_ordered_dict = callable
            .as_global()
            .is_some_and(|g| g.module == "collections" && g.name == "OrderedDict");
        if is_ordered_dict && args.as_tuple().is_some_and(<[Value]>::is_empty) {
            return self.push_node(Value::Dict, Vec::new());
        }
        self.push_node(Value::Call, vec![callable, args])
    }

    fn run(&mut self) -> Result<Value, ErrorKind> {
        loop {
            let offset = self.pos - self.start;
            let op = self.u8()?;
            match op {
                b'.' => return self.pop(), // STOP
                0x80 => {
                    self.u8()?; // PROTO: the version does not change decoding
                }
                0x95 => {
                    self.array::<8>()?; // FRAME: only a buffering hint
                }
                b'(' => {
                    self.check_stack()?;
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    // POP: an empty frame pops its mark, as in CPython.
                    if self.marks.last() == Some(&self.stack.len()) {
                        self.marks.pop();
                    } else {
                        self.pop()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'2' => {
                    let v = self.top()?.clone(); // DUP
                    self.push_shared(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v.into()))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Value::Int(v.into()))?;
                }
                0x8a => {
                    let n = self.len::<1>()?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                0x8b => {
                    let n = self.len::<4>()?;
                    let v = self.long(n)?;
                    self.push(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.len::<4>()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.len::<1>()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len::<8>()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'T' => {
                    let n = self.len::<4>()?;
                    let v = self.py2_string(n)?;
                    self.push(v)?;
                }
                b'U' => {
                    let n = self.len::<1>()?;
                    let v = self.py2_string(n)?;
                    self.push(v)?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.len::<4>()?,
                        b'C' => self.len::<1>()?,
                        _ => self.len::<8>()?,
                    };
                    self.take(n)?;
                    self.push(Value::Bytes(n))?;
                }
                b')' => self.push_node(Value::Tuple, Vec::new())?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_node(Value::Tuple, items)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let floor = self.floor();
                    if self.stack.len() < floor + n {
                        return Err(malformed("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_node(Value::Tuple, items)?;
                }
                b']' => self.push_node(Value::List, Vec::new())?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_node(Value::List, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(vec![v], false)?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, false)?;
                }
                b'}' => self.push_node(Value::Dict, Vec::new())?,
                b'd' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(malformed("odd number of dict items"));
                    }
                    self.push_node(Value::Dict, items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(vec![k, v], true)?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_top(items, true)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Value::Global(Rc::new(Global { module, name })))?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.as_str(), name.as_str()) {
                        (Some(module), Some(name)) => {
                            self.push(Value::Global(Rc::new(Global {
                                module: module.into(),
                                name: name.into(),
                            })))?
                        }
                        _ => return Err(malformed("STACK_GLOBAL without strings")),
                    }
                }
                b'R' | 0x81 => {
                    // REDUCE and NEWOBJ
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.call(callable, args)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let obj = self.top()?;
                    // A dict's attribute state (OrderedDict._metadata) is not data.
                    if !matches!(obj, Value::Dict(_)) {
                        let obj = self.pop()?;
                        self.push_node(Value::Build, vec![obj, state])?;
                    }
                }
                b'Q' => {
                    let id = self.pop()?;
                    // A second use of the id: each is turned into a storage reference.
                    self.budget.spend(id.weight())?;
                    self.persistent_ids.push(id.clone());
                    self.push_node(Value::PersId, vec![id])?;
                }
                b'h' => {
                    let id = self.u8()?;
                    self.memo_get(id.into())?;
                }
                b'j' => {
                    let id = self.u32()?;
                    self.memo_get(id)?;
                }
                b'q' => {
                    let id = self.u8()?;
                    self.memo_put(id.into())?;
                }
                b'r' => {
                    let id = self.u32()?;
                    self.memo_put(id)?;
                }
                0x94 => {
                    let id =
                        u32::try_from(self.memo.len()).map_err(|_| malformed("memo too large"))?;
                    self.memo_put(id)?;
                }
                opcode => return Err(ErrorKind::UnknownOpcode { opcode, offset }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_all(bytes: &[u8]) -> Result<Value, ErrorKind> {
        let mut pos = 0;
        load(bytes, &mut pos).map(|l| l.value)
    }

    #[test]
    fn reads_a_dict_with_ints_and_strings() {
        // pickle.dumps({'a': 1, 'b': 'x', 'c': -2}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02X\x01\x00\x00\x00xq\x03X\x01\x00\x00\x00cq\x04J\xfe\xff\xff\xffu.";
        let v = load_all(bytes).unwrap();
        let pairs: Vec<_> = v
            .dict_pairs()
            .unwrap()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), v.describe()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a".to_string(), "the int 1".to_string()),
                ("b".to_string(), "the string \"x\"".to_string()),
                ("c".to_string(), "the int -2".to_string()),
            ]
        );
    }

    #[test]
    fn long1_sign_extends_and_keeps_wide_values() {
        assert_eq!(load_all(b"\x8a\x01\xff.").unwrap().as_int(), Some(-1));
        assert_eq!(
            load_all(b"\x8a\x02\x00\x80.").unwrap().as_int(),
            Some(-32768)
        );
        let big = load_all(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.").unwrap();
        assert!(matches!(big, Value::BigInt(b) if b.len() == 9));
    }

    #[test]
    fn calls_are_recorded_not_run() {
        // pickle.dumps(os.system, ...)-like: GLOBAL then REDUCE with a string argument.
        let v = load_all(b"cos\nsystem\nX\x02\x00\x00\x00ls\x85R.").unwrap();
        assert_eq!(v.describe(), "a call to os.system");
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let mut bytes = vec![b'N'];
        bytes.extend(std::iter::repeat_n(0x85u8, 10_000));
        bytes.push(b'.');
        assert!(matches!(load_all(&bytes), Err(ErrorKind::Malformed(_))));
    }

    #[test]
    fn huge_length_prefix_is_truncation() {
        assert!(matches!(
            load_all(b"X\xff\xff\xff\x7fabc"),
            Err(ErrorKind::Truncated(_))
        ));
    }

    #[test]
    fn unknown_opcode_reports_offset() {
        assert!(matches!(
            load_all(b"\x80\x02\xff"),
            Err(ErrorKind::UnknownOpcode {
                opcode: 0xff,
                offset: 2
            })
        ));
    }

    #[test]
    fn memo_snapshots_cost_is_bounded() {
        // EMPTY_DICT, then repeatedly: memoise it and add an item, forcing a copy each time.
        let mut bytes = vec![b'}'];
        for _ in 0..20_000 {
            bytes.extend_from_slice(b"q\x00NNs");
        }
        bytes.push(b'.');
        let mut pos = 0;
        let started = std::time::Instant::now();
        let result = load(&bytes, &mut pos);
        assert!(result.is_err());
        assert!(started.elapsed().as_secs() < 5);
    }
}
