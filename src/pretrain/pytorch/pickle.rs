//! A safe unpickler for the `data.pkl` of `torch.save` files ([`super::archive`] opens the zip
//! archive around it): tensors come out as references to their storages, read on demand.
//!
//! # Why our own unpickler
//! - burn-store 0.21's PyTorch reader (the preferred crate) fails on what real nnssl and
//!   nnU-Net checkpoints contain: its `REDUCE` knows only tensors and `OrderedDict`, so the
//!   `torch.device` in every nnssl/nnU-Net `init_args` aborts the whole file
//!   (`UnsupportedType`), and its `SETITEM` refuses the int keys of every optimizer state;
//!   it also builds unknown `NEWOBJ`/`BUILD` objects silently instead of refusing them.
//! - serde-pickle has no persistent ids (`BINPERSID`), which every tensor uses.
//! - candle-core's pickle module would pull candle's whole tensor library and, through it,
//!   `tokenizers` with the Oniguruma C library, for one parser.
//!
//! This unpickler executes nothing. Every `GLOBAL` must be on an allow-list of data-only
//! names (tensor rebuilding, `OrderedDict`, `torch.device`, sets, bytes, numpy scalars, torch
//! dtypes and storage types), the same kind of list as `torch.load(weights_only=True)`; any
//! other name (`os.system`, a trainer class, ...) rejects the file before anything else
//! happens. Objects live in an arena so that memo references share them as pickle means.

use std::collections::HashMap;

/// Element type of a tensor storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DType {
    /// float64
    F64,
    /// float32
    F32,
    /// float16
    F16,
    /// bfloat16
    BF16,
    /// int64
    I64,
    /// int32
    I32,
    /// int16
    I16,
    /// int8
    I8,
    /// uint8
    U8,
    /// bool
    Bool,
}

impl DType {
    fn from_storage(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => DType::F64,
            "FloatStorage" => DType::F32,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// PyTorch's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            DType::F64 => "float64",
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::I64 => "int64",
            DType::I32 => "int32",
            DType::I16 => "int16",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::Bool => "bool",
        }
    }
}

/// A tensor as the pickle describes it: which storage, and the view into it (in elements).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    /// The storage's key (`<name>/data/<key>` in the archive).
    pub storage: String,
    /// Element type.
    pub dtype: DType,
    /// Elements in the storage.
    pub storage_len: usize,
    /// First element of the view.
    pub offset: usize,
    /// Shape of the view.
    pub shape: Vec<usize>,
    /// Strides of the view, in elements.
    pub stride: Vec<usize>,
}

/// A value of a checkpoint's pickle (anything else was refused while parsing).
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// `int` (within i64)
    Int(i64),
    /// `float` (and numpy float scalars)
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `list`
    List(Vec<Value>),
    /// `tuple`
    Tuple(Vec<Value>),
    /// `dict` / `OrderedDict`, in insertion order
    Dict(Vec<(Value, Value)>),
    /// `set` / `frozenset`
    Set(Vec<Value>),
    /// A tensor (data still in the archive).
    Tensor(TensorRef),
    /// A `torch.device`, e.g. `cuda:0`.
    Device(String),
    /// A torch dtype, e.g. `torch.float32`.
    Dtype(String),
}

impl Value {
    /// The value under string key `key` of a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string keys of a dict (others skipped), in order.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Value::Dict(items) => items
                .iter()
                .filter_map(|(k, _)| k.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Python's name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::Tensor(_) => "tensor",
            Value::Device(_) => "torch.device",
            Value::Dtype(_) => "torch.dtype",
        }
    }

    /// The value as JSON; tensors become what `tensor` makes of them (small tensors in plans
    /// are numpy arrays that nnssl converted to tensors).
    pub fn to_json(
        &self,
        tensor: &mut dyn FnMut(&TensorRef) -> serde_json::Value,
    ) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::None => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) | Value::Device(s) | Value::Dtype(s) => J::String(s.clone()),
            Value::Bytes(b) => J::String(String::from_utf8_lossy(b).into_owned()),
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => {
                J::Array(v.iter().map(|x| x.to_json(tensor)).collect())
            }
            Value::Dict(items) => J::Object(
                items
                    .iter()
                    .map(|(k, v)| {
                        let key = match k {
                            Value::Str(s) => s.clone(),
                            Value::Int(i) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        (key, v.to_json(tensor))
                    })
                    .collect(),
            ),
            Value::Tensor(t) => tensor(t),
        }
    }
}

/// An allowed global: everything a checkpoint's pickle may name.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    RebuildFromTypeV2,
    TensorType,
    Device,
    Set,
    FrozenSet,
    CodecsEncode,
    NumpyScalar,
    NumpyDtype,
    Storage(DType),
    TorchDtype(String),
}

const TORCH_DTYPES: &[&str] = &[
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
    "float",
    "double",
    "half",
    "long",
    "int",
];

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromTypeV2,
        ("torch", "Tensor") | ("torch.nn.parameter", "Parameter") => Global::TensorType,
        ("torch", "device") => Global::Device,
        ("builtins" | "__builtin__", "set") => Global::Set,
        ("builtins" | "__builtin__", "frozenset") => Global::FrozenSet,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => Global::NumpyScalar,
        ("numpy", "dtype") => Global::NumpyDtype,
        ("torch", n) if DType::from_storage(n).is_some() => {
            Global::Storage(DType::from_storage(n).expect("checked"))
        }
        ("torch", n) if TORCH_DTYPES.contains(&n) => Global::TorchDtype(format!("torch.{n}")),
        _ => return None,
    })
}

/// An object of the arena: values plus the intermediate things pickles build values from.
#[derive(Clone, Debug)]
enum Obj {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Tensor(TensorRef),
    Device(String),
    Global(Global),
    Storage {
        dtype: DType,
        key: String,
        len: usize,
    },
    NumpyDtype {
        code: String,
        little: bool,
    },
}

/// Why a pickle was refused: the global it names, or what is malformed.
#[derive(Debug)]
pub enum PickleError {
    /// A global that is not on the allow-list.
    Global(String),
    /// Anything else, in words.
    Invalid(String),
}

type PResult<T> = Result<T, PickleError>;

fn invalid<T>(reason: impl Into<String>) -> PResult<T> {
    Err(PickleError::Invalid(reason.into()))
}

struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    arena: Vec<Obj>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        let data: &'a [u8] = self.data;
        if n > data.len() - self.pos {
            return invalid("the pickle ends early (truncated)");
        }
        let s = &data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> PResult<u64> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn line(&mut self) -> PResult<String> {
        let rest = &self.data[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Invalid(
                "the pickle ends early (truncated)".into(),
            ))?;
        let s = String::from_utf8_lossy(&rest[..end]).into_owned();
        self.pos += end + 1;
        Ok(s)
    }

    fn text(&mut self, n: usize) -> PResult<String> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).or_else(|_| invalid("a string is not valid UTF-8"))
    }

    fn new_obj(&mut self, o: Obj) -> usize {
        self.arena.push(o);
        self.arena.len() - 1
    }

    fn push(&mut self, o: Obj) {
        let id = self.new_obj(o);
        self.stack.push(id);
    }

    fn pop(&mut self) -> PResult<usize> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return invalid("stack underflow (below a mark)");
        }
        self.stack
            .pop()
            .ok_or(PickleError::Invalid("stack underflow".into()))
    }

    fn top(&self) -> PResult<usize> {
        self.stack.last().copied().ok_or(PickleError::Invalid(
            "memo store from an empty stack".into(),
        ))
    }

    fn pop_mark(&mut self) -> PResult<Vec<usize>> {
        let m = self
            .marks
            .pop()
            .ok_or(PickleError::Invalid("no mark".into()))?;
        if m > self.stack.len() {
            return invalid("mark above the stack");
        }
        Ok(self.stack.split_off(m))
    }

    fn global(&mut self, module: &str, name: &str) -> PResult<()> {
        match allowed_global(module, name) {
            Some(g) => {
                self.push(Obj::Global(g));
                Ok(())
            }
            None => Err(PickleError::Global(format!("{module}.{name}"))),
        }
    }

    fn items(&self, id: usize) -> PResult<Vec<usize>> {
        match &self.arena[id] {
            Obj::Tuple(v) | Obj::List(v) => Ok(v.clone()),
            other => invalid(format!("expected a tuple, got {other:?}")),
        }
    }

    fn int(&self, id: usize) -> PResult<i64> {
        match &self.arena[id] {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(i64::from(*b)),
            other => invalid(format!("expected an int, got {other:?}")),
        }
    }

    fn usize_list(&self, id: usize) -> PResult<Vec<usize>> {
        self.items(id)?
            .into_iter()
            .map(|i| {
                let v = self.int(i)?;
                usize::try_from(v).or_else(|_| invalid(format!("negative size {v}")))
            })
            .collect()
    }

    fn string(&self, id: usize) -> PResult<String> {
        match &self.arena[id] {
            Obj::Str(s) => Ok(s.clone()),
            other => invalid(format!("expected a string, got {other:?}")),
        }
    }

    fn set_items(&mut self, target: usize, pairs: &[usize]) -> PResult<()> {
        if !pairs.len().is_multiple_of(2) {
            return invalid("SETITEMS with an odd number of items");
        }
        let Obj::Dict(items) = &mut self.arena[target] else {
            return invalid("SETITEM(S) on something other than a dict");
        };
        for p in pairs.chunks(2) {
            items.push((p[0], p[1]));
        }
        Ok(())
    }

    fn rebuild_tensor(&self, args: usize) -> PResult<Obj> {
        let a = self.items(args)?;
        if a.len() < 4 {
            return invalid("_rebuild_tensor_v2 needs storage, offset, size and stride");
        }
        let Obj::Storage { dtype, key, len } = &self.arena[a[0]] else {
            return invalid("_rebuild_tensor_v2: the first argument is not a storage");
        };
        let offset = usize::try_from(self.int(a[1])?).or_else(|_| invalid("negative offset"))?;
        let shape = self.usize_list(a[2])?;
        let stride = self.usize_list(a[3])?;
        if shape.len() != stride.len() {
            return invalid("a tensor's shape and stride differ in length");
        }
        let last = shape
            .iter()
            .zip(&stride)
            .try_fold(offset, |acc, (&n, &s)| {
                if n == 0 {
                    Some(acc)
                } else {
                    acc.checked_add((n - 1).checked_mul(s)?)
                }
            })
            .ok_or(PickleError::Invalid("a tensor view overflows".into()))?;
        if shape.iter().all(|&n| n > 0) && last >= *len {
            return invalid(format!(
                "a tensor view reaches element {last} of storage '{key}', which has {len}"
            ));
        }
        Ok(Obj::Tensor(TensorRef {
            storage: key.clone(),
            dtype: *dtype,
            storage_len: *len,
            offset,
            shape,
            stride,
        }))
    }

    fn numpy_scalar(&self, args: &[usize]) -> PResult<Obj> {
        let (Some(&d), Some(&b)) = (args.first(), args.get(1)) else {
            return invalid("numpy scalar without dtype and bytes");
        };
        let Obj::NumpyDtype { code, little } = &self.arena[d] else {
            return invalid("numpy scalar: the first argument is not a dtype");
        };
        let bytes = match &self.arena[b] {
            Obj::Bytes(x) => x.clone(),
            Obj::Str(s) => latin1(s)?,
            other => return invalid(format!("numpy scalar data is {other:?}")),
        };
        let mut raw = bytes.clone();
        if !little {
            raw.reverse();
        }
        let fixed = |n: usize| -> PResult<[u8; 8]> {
            if raw.len() != n {
                return invalid(format!("numpy scalar '{code}' has {} bytes", raw.len()));
            }
            let mut out = [0u8; 8];
            out[..n].copy_from_slice(&raw);
            Ok(out)
        };
        Ok(match code.as_str() {
            "f8" => Obj::Float(f64::from_le_bytes(fixed(8)?)),
            "f4" => Obj::Float(f64::from(f32::from_le_bytes(
                fixed(4)?[..4].try_into().expect("4"),
            ))),
            "i8" => Obj::Int(i64::from_le_bytes(fixed(8)?)),
            "i4" => Obj::Int(i64::from(i32::from_le_bytes(
                fixed(4)?[..4].try_into().expect("4"),
            ))),
            "u1" | "b1" if raw.len() == 1 => {
                if code == "b1" {
                    Obj::Bool(raw[0] != 0)
                } else {
                    Obj::Int(i64::from(raw[0]))
                }
            }
            other => return invalid(format!("numpy scalar of dtype '{other}' is not supported")),
        })
    }

    /// Apply an allowed callable (REDUCE / NEWOBJ); nothing is ever executed.
    fn call(&mut self, callable: usize, args: usize) -> PResult<Obj> {
        let Obj::Global(g) = self.arena[callable].clone() else {
            return invalid("REDUCE on something that is not a global");
        };
        let a = self.items(args)?;
        Ok(match g {
            Global::OrderedDict => {
                let mut items = Vec::new();
                if let Some(&list) = a.first() {
                    for pair in self.items(list)? {
                        let p = self.items(pair)?;
                        if p.len() != 2 {
                            return invalid("OrderedDict item is not a pair");
                        }
                        items.push((p[0], p[1]));
                    }
                }
                Obj::Dict(items)
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(args)?,
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let data = *a
                    .first()
                    .ok_or(PickleError::Invalid("empty parameter".into()))?;
                match &self.arena[data] {
                    Obj::Tensor(_) => self.arena[data].clone(),
                    other => return invalid(format!("parameter data is {other:?}")),
                }
            }
            Global::RebuildFromTypeV2 => {
                if a.len() < 3 {
                    return invalid("_rebuild_from_type_v2 needs func, type and args");
                }
                if !matches!(self.arena[a[1]], Obj::Global(Global::TensorType)) {
                    return invalid("_rebuild_from_type_v2 of a type other than Tensor/Parameter");
                }
                if !matches!(self.arena[a[0]], Obj::Global(Global::RebuildTensorV2)) {
                    return invalid(
                        "_rebuild_from_type_v2 with a function other than _rebuild_tensor_v2",
                    );
                }
                self.rebuild_tensor(a[2])?
            }
            Global::Device => {
                let kind = self.string(
                    *a.first()
                        .ok_or(PickleError::Invalid("empty device".into()))?,
                )?;
                match a.get(1).map(|&i| &self.arena[i]) {
                    Some(Obj::Int(i)) => Obj::Device(format!("{kind}:{i}")),
                    _ => Obj::Device(kind),
                }
            }
            Global::Set | Global::FrozenSet => Obj::Set(match a.first() {
                Some(&l) => self.items(l)?,
                None => Vec::new(),
            }),
            Global::CodecsEncode => {
                let text = self.string(
                    *a.first()
                        .ok_or(PickleError::Invalid("empty encode".into()))?,
                )?;
                Obj::Bytes(latin1(&text)?)
            }
            Global::NumpyDtype => {
                let code = self.string(
                    *a.first()
                        .ok_or(PickleError::Invalid("empty dtype".into()))?,
                )?;
                Obj::NumpyDtype { code, little: true }
            }
            Global::NumpyScalar => self.numpy_scalar(&a)?,
            Global::TensorType | Global::Storage(_) | Global::TorchDtype(_) => {
                return invalid(format!("{g:?} is not callable in a checkpoint"));
            }
        })
    }

    fn build(&mut self, target: usize, state: usize) -> PResult<()> {
        match &self.arena[target] {
            // Attributes of an OrderedDict (a state dict's `_metadata`): not items, not needed.
            Obj::Dict(_) | Obj::Tensor(_) => Ok(()),
            Obj::NumpyDtype { .. } => {
                let order = self
                    .items(state)
                    .ok()
                    .and_then(|s| s.get(1).copied())
                    .and_then(|i| self.string(i).ok());
                if let (Some(o), Obj::NumpyDtype { little, .. }) = (order, &mut self.arena[target])
                {
                    *little = o != ">";
                }
                Ok(())
            }
            other => invalid(format!("BUILD on {other:?}")),
        }
    }

    fn run(&mut self) -> PResult<usize> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return invalid(format!("pickle protocol {v} is unknown"));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Obj::None),
                0x88 => self.push(Obj::Bool(true)),
                0x89 => self.push(Obj::Bool(false)),
                b'I' => {
                    let l = self.line()?;
                    let o = match l.as_str() {
                        "00" => Obj::Bool(false),
                        "01" => Obj::Bool(true),
                        s => Obj::Int(s.parse().or_else(|_| invalid(format!("bad INT '{s}'")))?),
                    };
                    self.push(o);
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Obj::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Obj::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Obj::Int(v as i64));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.uint(4)? as usize
                    };
                    if n > 8 {
                        return invalid("an integer does not fit 64 bits");
                    }
                    let b = self.take(n)?;
                    let mut v = b
                        .iter()
                        .rev()
                        .fold(0i64, |acc, &x| (acc << 8) | i64::from(x));
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Obj::Int(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().expect("8 bytes"));
                    self.push(Obj::Float(v));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l
                        .trim()
                        .parse()
                        .or_else(|_| invalid(format!("bad FLOAT '{l}'")))?;
                    self.push(Obj::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.uint(4)?,
                        0x8c => u64::from(self.u8()?),
                        _ => self.uint(8)?,
                    };
                    let s = self.text(usize::try_from(n).unwrap_or(usize::MAX))?;
                    self.push(Obj::Str(s));
                }
                b'U' | b'T' => {
                    let n = if op == b'U' {
                        u64::from(self.u8()?)
                    } else {
                        self.uint(4)?
                    };
                    let b = self.take(usize::try_from(n).unwrap_or(usize::MAX))?;
                    self.push(Obj::Str(b.iter().map(|&c| c as char).collect()));
                }
                b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => self.uint(4)?,
                        _ => self.uint(8)?,
                    };
                    let b = self
                        .take(usize::try_from(n).unwrap_or(usize::MAX))?
                        .to_vec();
                    self.push(Obj::Bytes(b));
                }
                b')' => self.push(Obj::Tuple(Vec::new())),
                b't' => {
                    let v = self.pop_mark()?;
                    self.push(Obj::Tuple(v));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(self.pop()?);
                    }
                    v.reverse();
                    self.push(Obj::Tuple(v));
                }
                b']' => self.push(Obj::List(Vec::new())),
                b'l' => {
                    let v = self.pop_mark()?;
                    self.push(Obj::List(v));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let target = self.top()?;
                    let Obj::List(list) = &mut self.arena[target] else {
                        return invalid("APPEND(S) on something other than a list");
                    };
                    list.extend(items);
                }
                b'}' => self.push(Obj::Dict(Vec::new())),
                b'd' => {
                    let v = self.pop_mark()?;
                    let id = self.new_obj(Obj::Dict(Vec::new()));
                    self.set_items(id, &v)?;
                    self.stack.push(id);
                }
                b's' | b'u' => {
                    let pairs = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    let target = self.top()?;
                    self.set_items(target, &pairs)?;
                }
                0x8f => self.push(Obj::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    let Obj::Set(set) = &mut self.arena[target] else {
                        return invalid("ADDITEMS on something other than a set");
                    };
                    set.extend(items);
                }
                0x91 => {
                    let v = self.pop_mark()?;
                    self.push(Obj::Set(v));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.string(module)?, self.string(name)?);
                    self.global(&module, &name)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let o = self.call(callable, args)?;
                    self.push(o);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let p = self.items(pid)?;
                    if p.len() < 5 || self.string(p[0]).ok().as_deref() != Some("storage") {
                        return invalid("a persistent id that is not a tensor storage");
                    }
                    let Obj::Global(Global::Storage(dtype)) = self.arena[p[1]] else {
                        return invalid("a storage of unknown type");
                    };
                    let key = self.string(p[2])?;
                    let len = usize::try_from(self.int(p[4])?)
                        .or_else(|_| invalid("negative storage size"))?;
                    self.push(Obj::Storage { dtype, key, len });
                }
                b'q' | b'r' | 0x94 | b'p' => {
                    let idx = match op {
                        b'q' => u64::from(self.u8()?),
                        b'r' => self.uint(4)?,
                        b'p' => self.line()?.parse().or_else(|_| invalid("bad PUT index"))?,
                        _ => self.memo.len() as u64,
                    };
                    let t = self.top()?;
                    self.memo.insert(idx, t);
                }
                b'h' | b'j' | b'g' => {
                    let idx = match op {
                        b'h' => u64::from(self.u8()?),
                        b'j' => self.uint(4)?,
                        _ => self.line()?.parse().or_else(|_| invalid("bad GET index"))?,
                    };
                    let id = *self
                        .memo
                        .get(&idx)
                        .ok_or(PickleError::Invalid(format!("memo entry {idx} is missing")))?;
                    self.stack.push(id);
                }
                other => {
                    return invalid(format!(
                        "pickle opcode 0x{other:02x} ('{}') is not allowed in a checkpoint",
                        other as char
                    ));
                }
            }
        }
    }

    fn value(&self, id: usize, depth: usize, budget: &mut usize) -> PResult<Value> {
        if depth > 256 {
            return invalid("the pickle nests deeper than 256 levels (a cycle?)");
        }
        if *budget == 0 {
            return invalid("the pickle expands to more than 20 million values");
        }
        *budget -= 1;
        let many = |v: &[usize], budget: &mut usize| -> PResult<Vec<Value>> {
            v.iter()
                .map(|&i| self.value(i, depth + 1, budget))
                .collect()
        };
        Ok(match &self.arena[id] {
            Obj::None => Value::None,
            Obj::Bool(b) => Value::Bool(*b),
            Obj::Int(i) => Value::Int(*i),
            Obj::Float(f) => Value::Float(*f),
            Obj::Str(s) => Value::Str(s.clone()),
            Obj::Bytes(b) => Value::Bytes(b.clone()),
            Obj::List(v) => Value::List(many(v, budget)?),
            Obj::Tuple(v) => Value::Tuple(many(v, budget)?),
            Obj::Set(v) => Value::Set(many(v, budget)?),
            Obj::Dict(items) => Value::Dict(
                items
                    .iter()
                    .map(|&(k, v)| {
                        Ok((
                            self.value(k, depth + 1, budget)?,
                            self.value(v, depth + 1, budget)?,
                        ))
                    })
                    .collect::<PResult<_>>()?,
            ),
            Obj::Tensor(t) => Value::Tensor(t.clone()),
            Obj::Device(d) => Value::Device(d.clone()),
            Obj::Global(Global::TorchDtype(d)) => Value::Dtype(d.clone()),
            other => return invalid(format!("a bare {other:?} is not a value")),
        })
    }
}

fn latin1(text: &str) -> PResult<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).or_else(|_| invalid("bytes outside latin-1")))
        .collect()
}

/// Parse a pickle into a [`Value`], refusing every global that is not on the allow-list.
pub fn parse_pickle(data: &[u8]) -> Result<Value, PickleError> {
    let mut m = Machine {
        data,
        pos: 0,
        arena: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = m.run()?;
    let mut budget = 20_000_000usize;
    m.value(root, 0, &mut budget)
}

#[cfg(test)]
mod tests;
