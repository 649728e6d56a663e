use super::*;

fn input(data: &str) -> Input {
    Input::new(
        "evt_1",
        "charge.paid",
        "2026-12-04T10:00:00Z",
        data.as_bytes(),
        &["br".to_string()],
    )
    .expect("a valid event")
}

fn run(code: &str, data: &str) -> Result<String, RunError> {
    let program = Program::compile(code).expect("compiles");
    program
        .transform(&input(data), &mut Budget::transform())
        .map(|b| String::from_utf8(b).expect("UTF-8"))
}

fn compile_error(code: &str) -> String {
    Program::compile(code)
        .expect_err("must not compile")
        .message
}

#[test]
fn a_filter_matches_on_true_only() {
    let p = Program::compile(".data.amount >= 100000").unwrap();
    let mut budget = Budget::filters();
    assert_eq!(
        p.matches(&input(r#"{"amount": 150000}"#), &mut budget),
        Ok(true)
    );
    assert_eq!(
        p.matches(&input(r#"{"amount": 99}"#), &mut budget),
        Ok(false)
    );
    // A string is not `true`.
    let p = Program::compile(r#""yes""#).unwrap();
    assert_eq!(p.matches(&input("{}"), &mut budget), Ok(false));
    let p = Program::compile("empty").unwrap();
    assert_eq!(p.matches(&input("{}"), &mut budget), Err(RunError::Empty));
}

#[test]
fn a_transform_reads_the_envelope_and_writes_json() {
    assert_eq!(
        run(
            "{id: .data.charge_id, status: .type}",
            r#"{"charge_id": "ch_1"}"#
        )
        .unwrap(),
        r#"{"id":"ch_1","status":"charge.paid"}"#
    );
    assert_eq!(
        run("[.id, .timestamp, .channels]", "{}").unwrap(),
        r#"["evt_1","2026-12-04T10:00:00Z",["br"]]"#
    );
    assert_eq!(
        run(
            ".data + {source: \"gancho\"} | del(.secret)",
            r#"{"a":1,"secret":2}"#
        )
        .unwrap(),
        r#"{"a":1,"source":"gancho"}"#
    );
    // The library's functions, as jq has them.
    assert_eq!(
        run(
            "[.data.items | length, (map(.p) | add), (map(.n) | join(\",\")), (.[0] | has(\"p\")), (.[0] | tojson), ([.[].n] | index(\"b\"))]",
            r#"{"items":[{"n":"a","p":2},{"n":"b","p":3}]}"#
        )
        .unwrap(),
        r#"[2,5,"a,b",true,"{\"n\":\"a\",\"p\":2}",1]"#
    );
    assert_eq!(
        run(r#"[.data.s | test("^ab"), ascii_upcase, (split("b") | length), ("x" | fromjson? // "no")]"#, r#"{"s":"abcb"}"#)
            .unwrap(),
        r#"[true,"ABCB",3,"no"]"#
    );
}

#[test]
fn the_languages_own_forms_need_no_definition() {
    assert_eq!(
        run(
            r#"[.data.a?, (.data.b // 1), "n=\(.data.n)", ([..] | length), (try error("x") catch .), (.data | .[]?), ({} | .a.b?), (if .data.n then "y" else "n" end), (reduce (1, 2) as $x (0; . + $x)), (label $out | 1, break $out), ("a" | ascii_downcase | test("a")), ([limit(2; range(9))] | add)]"#,
            r#"{"n": 3}"#
        )
        .unwrap(),
        r#"[null,1,"n=3",8,"x",3,null,"y",3,1,true,1]"#
    );
}

#[test]
fn an_error_is_the_programs_message() {
    assert_eq!(
        run(r#"error("no charge id")"#, "{}"),
        Err(RunError::Failed("no charge id".into()))
    );
    let e = run(".data.x + 1", r#"{"x": "a"}"#).unwrap_err();
    assert!(
        matches!(e, RunError::Failed(ref m) if m.contains("cannot")),
        "{e:?}"
    );
}

#[test]
fn an_output_that_is_not_a_body_is_refused() {
    let e = run("nan", "{}").unwrap_err();
    assert_eq!(e.reason(), "output", "{e:?}");
    let e = run(r#"[range(100000) | "abcd"] | join("")"#, "{}").unwrap_err();
    assert!(
        matches!(e, RunError::Output(_) | RunError::Cutoff(_)),
        "{e:?}"
    );
}

#[test]
fn runaway_programs_are_cut_off() {
    for (code, why) in [
        ("def f: f; f", Cutoff::Ops),
        ("def f: [f]; f", Cutoff::Depth),
        ("[range(1e9)]", Cutoff::Ops),
        ("[repeat(.)]", Cutoff::Ops),
        ("last(repeat(.))", Cutoff::Ops),
        ("def f: 1 + f; f", Cutoff::Depth),
        (r#""abcd" * 1e9"#, Cutoff::Size),
        (r#"reduce range(40) as $i ("ab"; . + .)"#, Cutoff::Size),
        ("reduce range(40) as $i (.; [., .]) | tojson", Cutoff::Size),
        ("reduce range(100000) as $i (null; [.])", Cutoff::Size),
        ("[range(20000)] as $a | $a - $a", Cutoff::Ops),
        // Each call reads 1 MiB of string: counted, not free.
        (
            r#"("a" * 1000000) as $a | [range(100000) | $a | startswith($a)]"#,
            Cutoff::Ops,
        ),
    ] {
        let e = run(code, r#"{"a": [1, 2, 3]}"#).unwrap_err();
        assert_eq!(e, RunError::Cutoff(why), "{code}");
    }
}

#[test]
fn regular_expressions_are_guarded() {
    assert_eq!(
        run(r#"[.data.s | test("^ab"), (split("b"; null) | length), sub("b"; "x"), ([scan("b")] | length)]"#, r#"{"s":"abcb"}"#).unwrap(),
        r#"[true,3,"axcb",2]"#
    );
    let e = run(r#"("a" * 2000) as $p | "x" | test($p)"#, "{}").unwrap_err();
    assert!(
        matches!(e, RunError::Failed(ref m) if m.contains("at most 1024")),
        "{e:?}"
    );
    // A long pattern over a long string is counted before it runs.
    assert_eq!(
        run(r#"("a" * 1000) as $p | ("a" * 200000) | test($p)"#, "{}"),
        Err(RunError::Cutoff(Cutoff::Ops))
    );
    // The unguarded functions are not a program's to call.
    assert!(compile_error(r#"_unguarded_matches("a"; null)"#).contains("gancho's own"));
}

#[test]
fn deep_json_is_refused_before_it_is_parsed() {
    let e = run(r#"("[" * 1000000) | fromjson"#, "{}").unwrap_err();
    assert!(
        matches!(e, RunError::Failed(ref m) if m.contains("deeper than 512")),
        "{e:?}"
    );
    assert_eq!(run(r#"("[[1]]" | fromjson)"#, "{}").unwrap(), "[[1]]");
    let deep = "[".repeat(600) + &"]".repeat(600);
    assert!(Input::new("e", "a.b", "t", deep.as_bytes(), &[]).is_err());
    assert_eq!(json_depth(br#"{"a": "[[[", "b": [{"c": "\"]"}]}"#), 3);
}

#[test]
fn a_budget_is_shared_and_spent() {
    let p = Program::compile("[range(10000)] | length").unwrap();
    let mut budget = Budget::filters();
    assert!(p.transform(&input("{}"), &mut budget).is_ok());
    let mut spent = 0;
    while !budget.spent() {
        if p.transform(&input("{}"), &mut budget).is_err() {
            break;
        }
        spent += 1;
        assert!(spent < 10, "the budget is never spent");
    }
    assert_eq!(
        p.transform(&input("{}"), &mut budget),
        Err(RunError::Cutoff(Cutoff::Ops))
    );
}

#[test]
fn deep_programs_do_not_compile() {
    let brackets = "[".repeat(MAX_PROGRAM);
    assert!(compile_error(&brackets).contains("deeper than"));
    let negations = "-".repeat(MAX_PROGRAM - 1) + "1";
    let e = compile_error(&negations);
    assert!(e.contains("deeper than"), "{e}");
    let long = ".".repeat(MAX_PROGRAM + 1);
    assert!(compile_error(&long).contains("at most 4096"));
    // Within the bounds, nesting is fine.
    assert_eq!(
        run(&format!("{}1{}", "[".repeat(40), "]".repeat(40)), "{}")
            .unwrap()
            .len(),
        81
    );
}

#[test]
fn forbidden_functions_are_compile_errors() {
    for (name, code) in [
        ("env", "env.HOME"),
        ("$ENV", "$ENV.GANCHO_ADMIN_TOKEN"),
        ("halt", "halt"),
        ("halt_error", r#"halt_error("x")"#),
        ("input", "input"),
        ("inputs", "[inputs]"),
        ("debug", "debug"),
        ("stderr", "stderr"),
        ("now", "now"),
        ("localtime", "now | localtime"),
        ("strflocaltime", r#"0 | strflocaltime("%H")"#),
    ] {
        let e = compile_error(code);
        assert!(
            e.contains(&format!("`{name}`")) || e.contains("`now`"),
            "{code}: {e}"
        );
        assert!(e.contains("not available"), "{code}: {e}");
    }
    for code in [r#"import "a" as a; ."#, r#"include "a"; ."#] {
        let e = compile_error(code);
        assert!(
            e.contains("import and include are not available"),
            "{code}: {e}"
        );
    }
    // A string that says a forbidden name is only a string.
    assert_eq!(run(r#"["now", "env"]"#, "{}").unwrap(), r#"["now","env"]"#);
}

#[test]
fn compile_errors_say_what_and_where() {
    let e = compile_error(".data |\n  map(.x");
    assert!(e.contains("expected"), "{e}");
    let e = compile_error(".data | nosuchfunction(1)");
    assert!(
        e.contains("undefined filter `nosuchfunction` at line 1, column 9"),
        "{e}"
    );
    let e = compile_error("$nope");
    assert!(e.contains("undefined variable `$nope`"), "{e}");
    assert!(compile_error("  ").contains("empty"));
}

#[test]
fn programs_are_shared_by_their_text_while_held() {
    let programs = Programs::default();
    let a = programs.get(".a").unwrap();
    let b = programs.get(".a").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(programs.len(), 1);
    drop((a, b));
    assert!(programs.is_empty());
    assert!(programs.get("(").is_err());
}

#[test]
#[ignore = "a timing, printed: cargo test --release -p gancho-jq -- --ignored --nocapture"]
fn time_of_a_spent_filter_budget() {
    for code in ["def f: f; f", "[range(1e9)]", ".data.amount >= 100000"] {
        let p = Program::compile(code).unwrap();
        let input = input(r#"{"amount": 5}"#);
        let start = std::time::Instant::now();
        for _ in 0..20 {
            let _ = p.matches(&input, &mut Budget::filters());
        }
        eprintln!("{code}: {:?} a run", start.elapsed() / 20);
    }
}
