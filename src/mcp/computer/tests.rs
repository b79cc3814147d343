//! The action vocabularies against fixtures written from the published docs.

use super::*;
use crate::session::Point;

fn fixture(name: &str) -> Vec<Map<String, Value>> {
    let path = format!(
        "{}/tests/fixtures/computer/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_object().unwrap().clone())
        .collect()
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn one(v: Value) -> Result<(ActionFormat, Mapped), SessionError> {
    map(&obj(v), None, false)
}

#[test]
fn every_fixture_action_maps_and_validates() {
    for (file, format) in [
        ("anthropic.json", ActionFormat::Anthropic),
        ("openai.json", ActionFormat::Openai),
    ] {
        for a in fixture(file) {
            let (f, m) = map(&a, None, false).unwrap_or_else(|e| panic!("{a:?}: {e}"));
            assert_eq!(f, format);
            for step in &m.steps {
                step.validate().unwrap_or_else(|e| panic!("{a:?}: {e}"));
            }
        }
    }
}

#[test]
fn anthropic_shapes_map_to_the_same_actions() {
    let (_, m) =
        one(json!({"action": "triple_click", "coordinate": [5, 6], "text": "shift"})).unwrap();
    match &m.steps[..] {
        [Action::Click {
            at,
            count: 3,
            modifiers,
            ..
        }] => {
            assert_eq!(*at, Some(Point { x: 5.0, y: 6.0 }));
            assert_eq!(modifiers, &["shift".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.reply, Reply::Screenshot);
    let (_, m) = one(json!({"action": "zoom", "region": [10, 20, 110, 70]})).unwrap();
    match &m.steps[..] {
        [Action::Zoom { region, .. }] => {
            assert_eq!(
                (region.x, region.y, region.width, region.height),
                (10.0, 20.0, 100.0, 50.0)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.reply, Reply::Outcome);
    let (_, m) = one(json!({"action": "hold_key", "text": "shift", "duration": 1.5})).unwrap();
    assert!(matches!(
        &m.steps[..],
        [Action::Key {
            hold_ms: Some(1500),
            ..
        }]
    ));
    let (_, m) =
        one(json!({"action": "scroll", "scroll_direction": "left", "scroll_amount": 4})).unwrap();
    assert!(matches!(
        &m.steps[..],
        [Action::Scroll {
            at: None,
            dx: -4,
            dy: 0,
            ..
        }]
    ));
    let (_, m) = one(json!({"action": "cursor_position"})).unwrap();
    assert_eq!(m.reply, Reply::CursorText);
    let (_, m) = one(json!({"action": "left_mouse_down"})).unwrap();
    assert!(matches!(
        &m.steps[..],
        [Action::MouseButton {
            at: None,
            down: true,
            ..
        }]
    ));
}

#[test]
fn openai_shapes_map_to_the_same_actions() {
    let (_, m) = one(json!({"type": "keypress", "keys": ["CTRL", "SHIFT", "T"]})).unwrap();
    match &m.steps[..] {
        [a @ Action::Key { keys, .. }] => {
            assert_eq!(keys, "CTRL+SHIFT+T");
            a.validate().unwrap();
        }
        other => panic!("{other:?}"),
    }
    let (_, m) = one(json!({"type": "keypress", "keys": ["ArrowLeft"]})).unwrap();
    m.steps[0].validate().unwrap();
    let (_, m) =
        one(json!({"type": "click", "button": "wheel", "x": 1, "y": 2, "keys": ["CTRL"]})).unwrap();
    assert!(matches!(
        &m.steps[..],
        [Action::Click {
            button: crate::vm::Button::Middle,
            count: 1,
            ..
        }]
    ));
    let (_, m) =
        one(json!({"type": "scroll", "x": 1, "y": 2, "scroll_x": -100, "scroll_y": 300})).unwrap();
    assert!(matches!(
        &m.steps[..],
        [Action::Scroll { dx: -1, dy: 3, .. }]
    ));
    assert_eq!(m.reply, Reply::Screenshot);
    let (_, m) = one(json!({"type": "screenshot"})).unwrap();
    assert_eq!(m.reply, Reply::Outcome);
}

#[test]
fn bad_actions_say_what_is_supported() {
    let e = one(json!({"action": "right_click_drag"}))
        .unwrap_err()
        .to_json();
    assert_eq!(e["error"], "unknown_action");
    assert!(e["valid"]
        .as_array()
        .unwrap()
        .contains(&json!("left_click_drag")));
    assert!(e["message"].as_str().unwrap().contains("hold_key"), "{e}");
    let e = one(json!({"type": "triple_click", "x": 1, "y": 1}))
        .unwrap_err()
        .to_json();
    assert!(e["message"].as_str().unwrap().contains("keypress"), "{e}");
    let e = one(json!({"x": 1})).unwrap_err().to_json();
    assert!(e["message"].as_str().unwrap().contains("format"), "{e}");
    let e = one(json!({"action": "left_click", "coordinate": [1]}))
        .unwrap_err()
        .to_json();
    assert!(e["message"].as_str().unwrap().contains("[x, y]"), "{e}");
    let e = one(json!({"action": "wait", "duration": 500}))
        .unwrap_err()
        .to_json();
    assert_eq!(e["field"], "duration");
    let e = one(json!({"type": "scroll", "x": 1, "y": 1, "scroll_y": 99999}))
        .unwrap_err()
        .to_json();
    assert_eq!(e["field"], "scroll_y");
    let e = one(json!({"type": "click", "button": "back", "x": 1, "y": 1}))
        .unwrap_err()
        .to_json();
    assert!(e["message"].as_str().unwrap().contains("ALT"), "{e}");
    let e = one(json!({"action": "zoom", "region": [10, 10, 5, 20]}))
        .unwrap_err()
        .to_json();
    assert!(e["message"].as_str().unwrap().contains("empty"), "{e}");
}

#[test]
fn a_refused_secret_is_recorded_without_its_text() {
    let a = ComputerArgs {
        session_id: "s".into(),
        action: obj(json!({"action": "type", "text": "hunter2-secret", "bogus": 1})),
        format: None,
        secret: true,
    };
    let r = recorded_args(&a).to_string();
    assert!(!r.contains("hunter2"), "{r}");
}

#[test]
fn secret_typed_text_stays_secret_in_both_formats() {
    for action in [
        json!({"action": "type", "text": "hunter2-secret"}),
        json!({"type": "type", "text": "hunter2-secret"}),
    ] {
        let (_, m) = map(&obj(action), None, true).unwrap();
        assert!(m.steps[0].is_secret());
        let r = m.steps[0].record().to_string();
        assert!(!r.contains("hunter2"), "{r}");
    }
    let e = one(json!({"action": "scroll", "scroll_direction": "up", "scroll_amount": 2.5}))
        .unwrap_err();
    assert!(e.to_string().contains("whole number"), "{e}");
    let e = one(json!({"type": "scroll", "x": 1, "y": 1, "scroll_y": "200"})).unwrap_err();
    assert!(e.to_string().contains("scroll_y"), "{e}");
}
