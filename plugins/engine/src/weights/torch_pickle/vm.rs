//! The pickle interpreter: a small, safe virtual machine for the pickle opcodes (protocols
//! 0 to 5) that never imports or executes anything. This file holds the machine, its reading,
//! stack and memo helpers and the opcode loop; `calls.rs` holds what the known globals do.
use super::arena::{Arena, Global, Value};
use super::{PtError, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// Run one pickle starting at `start`; returns the value and the offset just past STOP.
pub(super) fn run_pickle(
    data: &[u8],
    start: usize,
    record: &str,
    arena: &mut Arena,
    allow_persistent: bool,
) -> Result<(Value, usize)> {
    let vm = Vm {
        data,
        pos: start,
        record,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena,
        allow_persistent,
        call_depth: 0,
        copy_budget: (data.len() - start.min(data.len()))
            .saturating_mul(16)
            .saturating_add(1 << 16),
    };
    vm.run()
}

pub(super) struct Vm<'d, 'h> {
    pub(super) data: &'d [u8],
    pub(super) pos: usize,
    pub(super) record: &'d str,
    pub(super) stack: Vec<Value>,
    /// Stack heights at each MARK (Python's metastack).
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u64, Value>,
    pub(super) arena: &'h mut Arena,
    pub(super) allow_persistent: bool,
    pub(super) call_depth: u32,
    /// How many more values may be copied out of existing containers (call arguments,
    /// `list(x)`, `OrderedDict(x)`, …): bounds the work a small pickle can cause by reusing
    /// one large memoised container many times.
    pub(super) copy_budget: usize,
}

impl<'d> Vm<'d, '_> {
    // --- errors ---

    pub(super) fn malformed(&self, offset: usize, msg: impl Into<String>) -> PtError {
        PtError::Malformed {
            record: self.record.to_string(),
            offset,
            msg: msg.into(),
        }
    }

    pub(super) fn charge(&mut self, at: usize, n: usize) -> Result<()> {
        if n > self.copy_budget {
            return Err(self.malformed(
                at,
                "containers are copied far more often than a checkpoint needs (corrupt?)",
            ));
        }
        self.copy_budget -= n;
        Ok(())
    }

    /// The items of list/tuple `i`, charged to the copy budget.
    pub(super) fn list_items(&mut self, at: usize, i: usize) -> Result<Vec<Value>> {
        self.charge(at, self.arena.lists[i].len())?;
        Ok(self.arena.lists[i].clone())
    }

    // --- reading the opcode stream ---

    pub(super) fn take(&mut self, n: usize) -> Result<&'d [u8]> {
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(PtError::Truncated {
                what: format!("pickle {}", self.record),
                offset: self.pos,
                needed: (n - avail) as u64,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn take_len(&mut self, n: u64) -> Result<&'d [u8]> {
        let avail = (self.data.len() - self.pos) as u64;
        if n > avail {
            return Err(PtError::Truncated {
                what: format!("pickle {}", self.record),
                offset: self.pos,
                needed: n - avail,
            });
        }
        self.take(n as usize)
    }

    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(super) fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A text argument terminated by `\n` (protocol 0 opcodes, GLOBAL).
    pub(super) fn line(&mut self) -> Result<&'d [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(PtError::Truncated {
                what: format!("pickle {} (unterminated text argument)", self.record),
                offset: self.pos,
                needed: 1,
            }),
        }
    }

    pub(super) fn line_str(&mut self, at: usize) -> Result<&'d str> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.malformed(at, "text argument is not UTF-8"))
    }

    // --- the stack ---

    pub(super) fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    pub(super) fn pop(&mut self, at: usize) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed(at, "stack underflow"));
        }
        Ok(self.stack.pop().unwrap_or(Value::None))
    }

    pub(super) fn pop_n(&mut self, n: usize, at: usize) -> Result<Vec<Value>> {
        if self.stack.len() < self.floor() + n {
            return Err(self.malformed(at, "stack underflow"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    pub(super) fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK on the stack"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    pub(super) fn top(&self, at: usize) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed(at, "stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    pub(super) fn push_list(&mut self, items: Vec<Value>) {
        let i = self.arena.new_list(items);
        self.stack.push(Value::List(i));
    }

    pub(super) fn push_tuple(&mut self, items: Vec<Value>) {
        let i = self.arena.new_list(items);
        self.stack.push(Value::Tuple(i));
    }

    pub(super) fn memoize(&mut self, key: u64, at: usize) -> Result<()> {
        let v = self.top(at)?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    pub(super) fn memo_get(&mut self, key: u64, at: usize) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(at, format!("memo key {key} is not defined")))?;
        self.stack.push(v);
        Ok(())
    }

    pub(super) fn append(&mut self, at: usize, items: Vec<Value>) -> Result<()> {
        match self.top(at)? {
            Value::List(i) => {
                let i = *i;
                self.arena.lists[i].extend(items);
                Ok(())
            }
            // a list-like object we do not model: Python would call its append/extend
            Value::Object(_) => Ok(()),
            other => Err(self.malformed(at, format!("cannot append to {}", other.describe()))),
        }
    }

    pub(super) fn set_items(&mut self, at: usize, flat: Vec<Value>) -> Result<()> {
        if !flat.len().is_multiple_of(2) {
            return Err(self.malformed(at, "odd number of items for SETITEMS"));
        }
        match self.top(at)? {
            Value::Dict(d) => {
                let d = *d;
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    self.arena.dicts[d].insert(k, v);
                }
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(self.malformed(at, format!("cannot set items on {}", other.describe()))),
        }
    }

    pub(super) fn push_long(&mut self, bytes: &[u8]) {
        self.stack.push(long_from_le(bytes));
    }

    pub(super) fn global(module: &str, name: &str) -> Value {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        Value::Global(Rc::new(Global {
            module: module.to_string(),
            name: name.to_string(),
        }))
    }

    // --- the main loop ---

    pub(super) fn run(mut self) -> Result<(Value, usize)> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.malformed(at, format!("pickle protocol {v} (> 5)")));
                    }
                }
                // FRAME: only a buffering hint
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop(at)?;
                    return Ok((v, self.pos));
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // EMPTY_DICT
                b'}' => {
                    let d = self.arena.new_dict();
                    self.stack.push(Value::Dict(d));
                }
                // EMPTY_LIST, EMPTY_SET (sets are kept as lists)
                b']' | 0x8f => self.push_list(Vec::new()),
                // EMPTY_TUPLE
                b')' => self.push_tuple(Vec::new()),
                // TUPLE
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_tuple(items);
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84), at)?;
                    self.push_tuple(items);
                }
                // LIST, FROZENSET
                b'l' | 0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push_list(items);
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed(at, "odd number of items for DICT"));
                    }
                    let d = self.arena.new_dict();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        self.arena.dicts[d].insert(k, v);
                    }
                    self.stack.push(Value::Dict(d));
                }
                // APPEND
                b'a' => {
                    let v = self.pop(at)?;
                    self.append(at, vec![v])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    self.append(at, items)?;
                }
                // SETITEM
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    self.set_items(at, vec![k, v])?;
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark(at)?;
                    self.set_items(at, items)?;
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n))?;
                    self.push_long(b);
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.malformed(at, "negative LONG4 length"));
                    }
                    let b = self.take_len(n as u64)?;
                    self.push_long(b);
                }
                // INT, LONG (protocol 0 text)
                b'I' | b'L' => {
                    let s = self.line_str(at)?;
                    let v = match s {
                        "00" if op == b'I' => Value::Bool(false),
                        "01" if op == b'I' => Value::Bool(true),
                        _ => {
                            let t = s.strip_suffix('L').unwrap_or(s);
                            Value::Int(t.parse::<i64>().map_err(|_| {
                                self.malformed(at, format!("bad integer literal {s:?}"))
                            })?)
                        }
                    };
                    self.stack.push(v);
                }
                // FLOAT (text)
                b'F' => {
                    let s = self.line_str(at)?;
                    let v = s
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.malformed(at, format!("bad float literal {s:?}")))?;
                    self.stack.push(Value::Float(v));
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                // NEWTRUE, NEWFALSE, NONE
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8; SHORT_BINSTRING, BINSTRING
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let n = match op {
                        b'X' => u64::from(self.u32()?),
                        0x8c | b'U' => u64::from(self.u8()?),
                        b'T' => {
                            let n = self.u32()? as i32;
                            if n < 0 {
                                return Err(self.malformed(at, "negative BINSTRING length"));
                            }
                            n as u64
                        }
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    let s: Rc<str> = String::from_utf8_lossy(b).into();
                    self.stack.push(Value::Str(s));
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    self.stack.push(Value::Bytes(b.into()));
                }
                // BINPUT, LONG_BINPUT, MEMOIZE, PUT
                b'q' => {
                    let k = self.u8()?;
                    self.memoize(u64::from(k), at)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(u64::from(k), at)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memoize(k, at)?;
                }
                b'p' => {
                    let s = self.line_str(at)?;
                    let k = s
                        .parse::<u64>()
                        .map_err(|_| self.malformed(at, format!("bad memo key {s:?}")))?;
                    self.memoize(k, at)?;
                }
                // BINGET, LONG_BINGET, GET
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u64::from(k), at)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(u64::from(k), at)?;
                }
                b'g' => {
                    let s = self.line_str(at)?;
                    let k = s
                        .parse::<u64>()
                        .map_err(|_| self.malformed(at, format!("bad memo key {s:?}")))?;
                    self.memo_get(k, at)?;
                }
                // GLOBAL
                b'c' => {
                    let module = self.line_str(at)?;
                    let name = self.line_str(at)?;
                    self.stack.push(Self::global(module, name));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = Self::global(m, n);
                            self.stack.push(g);
                        }
                        _ => return Err(self.malformed(at, "STACK_GLOBAL needs two strings")),
                    }
                }
                // REDUCE
                b'R' => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.call(at, func, args)?;
                    self.stack.push(v);
                }
                // NEWOBJ, NEWOBJ_EX
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop(at)?; // kwargs
                    }
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let v = self.new_object(at, cls, args)?;
                    self.stack.push(v);
                }
                // BUILD: set an object's state; irrelevant for everything we model
                // (e.g. the `_metadata` attribute of a state-dict OrderedDict)
                b'b' => {
                    self.pop(at)?;
                    self.top(at)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent_load(at, pid)?;
                    self.stack.push(v);
                }
                // POP
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.malformed(at, "POP on an empty stack"));
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark(at)?;
                }
                // DUP
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.stack.push(v);
                }
                _ => {
                    return Err(PtError::UnsupportedOpcode {
                        record: self.record.to_string(),
                        offset: at,
                        opcode: op,
                    })
                }
            }
        }
    }
}

/// Python `int.from_bytes(b, "little", signed=True)`, normalised.
pub(super) fn long_from_le(bytes: &[u8]) -> Value {
    let Some(&last) = bytes.last() else {
        return Value::Int(0);
    };
    let neg = last & 0x80 != 0;
    let fill = if neg { 0xff } else { 0x00 };
    let mut n = bytes.len();
    while n > 1 && bytes[n - 1] == fill && ((bytes[n - 2] & 0x80 != 0) == neg) {
        n -= 1;
    }
    if n <= 8 {
        let mut a = [fill; 8];
        a[..n].copy_from_slice(&bytes[..n]);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(bytes[..n].into())
    }
}
