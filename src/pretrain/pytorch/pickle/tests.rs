//! Tests of `pickle`.

use super::*;

#[test]
fn an_os_system_reduce_is_refused_by_name_before_anything_runs() {
    // pickle.dumps of a class whose __reduce__ returns (os.system, ("echo pwned",)), protocol 2
    let evil = b"\x80\x02cposix\x0asystem\x0aq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
    match parse_pickle(evil) {
        Err(PickleError::Global(g)) => assert_eq!(g, "posix.system"),
        other => panic!("not refused: {other:?}"),
    }
    // The same through STACK_GLOBAL (protocol 4) and a trainer class via NEWOBJ.
    let evil4 = b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x02ls\x85R.";
    assert!(matches!(parse_pickle(evil4), Err(PickleError::Global(g)) if g == "os.system"));
    let obj = b"\x80\x02cnnssl.training\nTrainer\n)\x81}b.";
    assert!(
        matches!(parse_pickle(obj), Err(PickleError::Global(g)) if g == "nnssl.training.Trainer")
    );
}

#[test]
fn containers_memo_sharing_ints_and_numpy_scalars_parse() {
    // pickle.dumps({'a': L, 'b': (1.5, True, None), 3: 'x', 'c': L}, protocol=2) with
    // L = [1, -2, 300, 2**40]: 'c' is a memo reference to the same list.
    let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00bq\x03G?\xf8\x00\x00\x00\x00\x00\x00\x88N\x87q\x04K\x03X\x01\x00\x00\x00xq\x05X\x01\x00\x00\x00cq\x06h\x02u.";
    let v = parse_pickle(p).unwrap();
    let a = v.get("a").unwrap();
    assert_eq!(
        a,
        &Value::List(vec![
            Value::Int(1),
            Value::Int(-2),
            Value::Int(300),
            Value::Int(1 << 40)
        ])
    );
    assert_eq!(v.get("c"), Some(a), "memo references share the object");
    assert_eq!(
        v.get("b").unwrap(),
        &Value::Tuple(vec![Value::Float(1.5), Value::Bool(true), Value::None])
    );
    // numpy.float64(1.5) as nnU-Net's logger pickles it (protocol 2).
    let np = b"\x80\x02cnumpy._core.multiarray\x0ascalar\x0aq\x00cnumpy\x0adtype\x0aq\x01X\x02\x00\x00\x00f8q\x02\x89\x88\x87q\x03Rq\x04(K\x03X\x01\x00\x00\x00<q\x05NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x06bc_codecs\x0aencode\x0aq\x07X\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00\xc3\xb8?q\x08X\x06\x00\x00\x00latin1q\x09\x86q\x0aRq\x0b\x86q\x0cRq\x0d.";
    assert_eq!(parse_pickle(np).unwrap(), Value::Float(1.5));
}

#[test]
fn truncated_and_malformed_pickles_are_errors() {
    assert!(matches!(
        parse_pickle(b"\x80\x02}q\x00(X\x05\x00\x00"),
        Err(PickleError::Invalid(_))
    ));
    assert!(matches!(
        parse_pickle(b"\x80\x02."),
        Err(PickleError::Invalid(_))
    ));
    assert!(matches!(
        parse_pickle(b"\x80\x02i__main__\nX\n."),
        Err(PickleError::Invalid(_))
    ));
}
