//! The OpenAPI 3 document of the API, kept in `api/openapi.json` and served at
//! `GET /openapi.json`.

/// The OpenAPI document, as served.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

#[cfg(test)]
mod tests {
    use serde::de::DeserializeOwned;
    use serde::Serialize;
    use serde_json::{json, Value};

    use super::OPENAPI_JSON;
    use crate::request::ERROR_STATUSES;
    use crate::router::ROUTES;
    use crate::server::HTTP_LAYER_STATUSES;
    use crate::types::*;

    fn doc() -> Value {
        serde_json::from_str(OPENAPI_JSON).expect("openapi.json parses")
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        doc["components"]["schemas"]
            .get(name)
            .unwrap_or_else(|| panic!("schema {name} missing"))
    }

    /// Checks `value` against `schema` structurally: types, properties, required, enums.
    fn validate(doc: &Value, schema: &Value, value: &Value, at: &str) {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            return validate(doc, self::schema(doc, name), value, at);
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                validate(doc, s, value, at);
            }
            return;
        }
        match schema["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no type"))
        {
            "string" => assert!(value.is_string(), "{at}: {value} is not a string"),
            "integer" => assert!(value.is_u64() || value.is_i64(), "{at}: not an integer"),
            "number" => assert!(value.is_number(), "{at}: not a number"),
            "boolean" => assert!(value.is_boolean(), "{at}: not a boolean"),
            "array" => {
                let items = value
                    .as_array()
                    .unwrap_or_else(|| panic!("{at}: not an array"));
                for (i, item) in items.iter().enumerate() {
                    validate(doc, &schema["items"], item, &format!("{at}[{i}]"));
                }
            }
            "object" => {
                let obj = value
                    .as_object()
                    .unwrap_or_else(|| panic!("{at}: not an object"));
                let props = schema["properties"].as_object().unwrap();
                for (k, v) in obj {
                    let p = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}: {k} not in schema"));
                    validate(doc, p, v, &format!("{at}.{k}"));
                }
            }
            t => panic!("{at}: unexpected type {t}"),
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            assert!(values.contains(value), "{at}: {value} not in enum");
        }
    }

    /// `full` has every field set. Checks the schema's properties equal its keys, that the
    /// schema's `required` list is exactly the fields that cannot be left out, that unknown
    /// fields are forbidden, and that the value validates.
    fn check<T: Serialize + DeserializeOwned>(name: &str, full: T) {
        let doc = doc();
        let s = schema(&doc, name);
        let value = serde_json::to_value(&full).unwrap();
        let obj = value.as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().cloned().collect();
        let mut props: Vec<_> = s["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        keys.sort();
        props.sort();
        assert_eq!(keys, props, "{name}: properties differ from the Rust type");
        assert_eq!(s["additionalProperties"], json!(false), "{name}");
        let required: Vec<&str> = s
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().map(|v| v.as_str().unwrap()).collect())
            .unwrap_or_default();
        for key in obj.keys() {
            let mut partial = obj.clone();
            partial.remove(key);
            let ok = serde_json::from_value::<T>(Value::Object(partial)).is_ok();
            assert_eq!(
                !ok,
                required.contains(&key.as_str()),
                "{name}.{key}: required?"
            );
            // An optional field may be null (serde reads it as absent); the document says so.
            let mut null = obj.clone();
            null.insert(key.clone(), Value::Null);
            let ok = serde_json::from_value::<T>(Value::Object(null)).is_ok();
            assert_eq!(
                ok,
                s["properties"][key]["nullable"] == json!(true),
                "{name}.{key}: nullable?"
            );
        }
        validate(&doc, s, &value, name);
    }

    fn bucket() -> TokenBucket {
        TokenBucket {
            size: 1,
            one_time_burst: Some(2),
            refill_time: 3,
        }
    }

    fn limiter() -> RateLimiter {
        RateLimiter {
            bandwidth: Some(bucket()),
            ops: Some(bucket()),
        }
    }

    fn s(v: &str) -> String {
        v.to_owned()
    }

    #[test]
    fn every_route_documented_with_its_methods() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(
            paths.len(),
            ROUTES.len(),
            "documented paths differ from the router's"
        );
        for (route, methods) in ROUTES {
            let item = paths
                .get(*route)
                .unwrap_or_else(|| panic!("{route} not documented"));
            let mut documented: Vec<String> = item.as_object().unwrap().keys().cloned().collect();
            let mut expected: Vec<String> = methods.iter().map(|m| m.to_lowercase()).collect();
            documented.sort();
            expected.sort();
            assert_eq!(documented, expected, "{route}");
            for (method, op) in item.as_object().unwrap() {
                check_responses(&doc, &format!("{method} {route}"), method, op);
            }
        }
    }

    /// An operation lists its success status and every status the server can answer with
    /// (nothing else: no `default`), each error with an `ApiError` body except those the
    /// HTTP layer sends bodiless, and 405 with its `Allow` header.
    fn check_responses(doc: &Value, at: &str, method: &str, op: &Value) {
        let success = if method == "get" { "200" } else { "204" };
        let mut expected: Vec<u16> = ERROR_STATUSES
            .iter()
            .chain(HTTP_LAYER_STATUSES)
            .copied()
            .collect();
        expected.push(success.parse().unwrap());
        // The one conditional request: a screenshot the client has already.
        if at == "get /display/screenshot" {
            expected.push(304);
        }
        expected.sort();
        expected.dedup();
        let responses = op["responses"].as_object().unwrap();
        let mut listed: Vec<u16> = responses
            .keys()
            .map(|k| k.parse().unwrap_or_else(|_| panic!("{at}: response {k}")))
            .collect();
        listed.sort();
        assert_eq!(listed, expected, "{at}: documented statuses");
        for (code, response) in responses {
            let response = match response.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    let name = r.strip_prefix("#/components/responses/").unwrap();
                    doc["components"]["responses"]
                        .get(name)
                        .unwrap_or_else(|| panic!("{at} {code}: response {name} missing"))
                }
                None => response,
            };
            let status: u16 = code.parse().unwrap();
            let body = &response["content"]["application/json"]["schema"]["$ref"];
            if status == 200 {
                assert!(response.get("content").is_some(), "{at} {code}: a body");
            } else if status == 204 || !ERROR_STATUSES.contains(&status) {
                assert!(response.get("content").is_none(), "{at} {code}: no body");
            } else {
                assert_eq!(body, "#/components/schemas/ApiError", "{at} {code}");
            }
            if status == 405 {
                assert_eq!(response["headers"]["Allow"]["required"], true, "{at}");
            }
        }
    }

    #[test]
    fn schemas_match_the_types() {
        check(
            "BootSource",
            BootSource {
                kernel_image_path: s("/k"),
                boot_args: Some(s("a")),
                initrd_path: Some(s("/i")),
            },
        );
        let mc = MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 2,
            smt: Some(true),
            cpu_template: Some(s("minimal")),
            track_dirty_pages: Some(true),
            shared_memory: Some(true),
            acpi: Some(false),
        };
        check("MachineConfig", mc);
        check(
            "MachineConfigPatch",
            MachineConfigPatch {
                vcpu_count: Some(1),
                mem_size_mib: Some(2),
                smt: Some(false),
                cpu_template: Some(s("None")),
                track_dirty_pages: Some(false),
                shared_memory: Some(false),
                acpi: Some(true),
            },
        );
        check("TokenBucket", bucket());
        check("RateLimiter", limiter());
        check(
            "Drive",
            Drive {
                drive_id: s("d"),
                path_on_host: s("/p"),
                is_root_device: true,
                is_read_only: Some(true),
                partuuid: Some(s("u")),
                cache_type: Some(s("Unsafe")),
                io_engine: Some(s("Sync")),
                rate_limiter: Some(limiter()),
                serial: Some(s("sn")),
            },
        );
        check(
            "DrivePatch",
            DrivePatch {
                drive_id: s("d"),
                path_on_host: Some(s("/p")),
                rate_limiter: Some(limiter()),
            },
        );
        check(
            "NetworkInterface",
            NetworkInterface {
                iface_id: s("e"),
                host_dev_name: s("tap0"),
                guest_mac: Some(s("06:00:00:00:00:01")),
                rx_rate_limiter: Some(limiter()),
                tx_rate_limiter: Some(limiter()),
            },
        );
        check(
            "NetworkInterfacePatch",
            NetworkInterfacePatch {
                iface_id: s("e"),
                rx_rate_limiter: Some(limiter()),
                tx_rate_limiter: Some(limiter()),
            },
        );
        check(
            "Console",
            Console {
                id: s("c"),
                output: s("socket:/x"),
            },
        );
        check(
            "VhostUserBlk",
            VhostUserBlk {
                id: s("vu"),
                socket: s("/run/vu.sock"),
            },
        );
        check(
            "VhostUserNet",
            VhostUserNet {
                id: s("vu"),
                socket: s("/run/vu.sock"),
                mac: Some(s("02:00:00:00:00:01")),
            },
        );
        check(
            "VhostUserFs",
            VhostUserFs {
                id: s("vf"),
                socket: s("/run/vf.sock"),
                tag: s("myfs"),
            },
        );
        check(
            "Vsock",
            Vsock {
                guest_cid: 3,
                uds_path: s("/v"),
                vsock_id: Some(s("v")),
            },
        );
        let node = NumaNode {
            node_id: 1,
            cpus: Some(vec![2, 3]),
            mem_size_mib: 512,
            host_node: Some(0),
            distances: Some(vec![NumaDistance {
                node_id: 0,
                distance: 20,
            }]),
            hugepages: Some(true),
        };
        check("NumaNode", node.clone());
        check(
            "NumaDistance",
            NumaDistance {
                node_id: 0,
                distance: 20,
            },
        );
        check("NumaConfig", NumaConfig { nodes: vec![node] });
        for action_type in [
            ActionType::InstanceStart,
            ActionType::SendCtrlAltDel,
            ActionType::FlushMetrics,
            ActionType::Shutdown,
            ActionType::Kill,
            ActionType::PowerButton,
        ] {
            check("InstanceActionInfo", InstanceActionInfo { action_type });
        }
        check(
            "Vm",
            Vm {
                state: VmState::Paused,
            },
        );
        check(
            "Vm",
            Vm {
                state: VmState::Resumed,
            },
        );
        for state in ["Not started", "Running", "Paused", "Stopped"] {
            check(
                "InstanceInfo",
                InstanceInfo {
                    id: s("i"),
                    state: s(state),
                    vmm_version: s("0.1.0"),
                    app_name: s("petrel"),
                },
            );
        }
        check(
            "SnapshotCreateParams",
            SnapshotCreateParams {
                snapshot_type: Some(s("Full")),
                snapshot_path: s("/s"),
                mem_file_path: s("/m"),
                parent_mem_file_path: Some(s("/p")),
            },
        );
        check(
            "MemBackend",
            MemBackend {
                backend_type: s("File"),
                backend_path: s("/m"),
            },
        );
        check(
            "SnapshotLoadParams",
            SnapshotLoadParams {
                snapshot_path: s("/s"),
                mem_backend: Some(MemBackend {
                    backend_type: s("Uffd"),
                    backend_path: s("/u"),
                }),
                mem_file_path: Some(s("/m")),
                enable_diff_snapshots: Some(true),
                resume_vm: Some(true),
            },
        );
        check(
            "MigrationSendParams",
            MigrationSendParams {
                url: s("unix:/m.sock"),
                downtime_ms: Some(300),
                timeout_s: Some(60),
                auto_converge: Some(true),
                max_bandwidth: Some(1 << 30),
                max_rounds: Some(30),
                local: Some(false),
            },
        );
        check(
            "MigrationReceiveParams",
            MigrationReceiveParams {
                url: s("tcp:[::1]:0"),
            },
        );
        for (role, state) in [
            ("none", "idle"),
            ("receive", "listening"),
            ("send", "connecting"),
            ("send", "precopy"),
            ("send", "stopping"),
            ("send", "completed"),
            ("receive", "failed"),
        ] {
            check(
                "MigrationInfo",
                MigrationInfo {
                    role: s(role),
                    state: s(state),
                    url: Some(s("tcp:127.0.0.1:4444")),
                    round: 2,
                    total_pages: 65536,
                    pages: 70000,
                    bytes: 1 << 28,
                    dirty_pages: 12,
                    bandwidth: 1 << 30,
                    expected_downtime_ms: 0.5,
                    downtime_ms: Some(1.25),
                    throttle_percent: 20,
                    elapsed_ms: 11.5,
                    error: Some(s("x")),
                },
            );
        }
        check(
            "Logger",
            Logger {
                log_path: Some(s("/l")),
                level: Some(s("Info")),
                show_level: Some(true),
                show_log_origin: Some(true),
                module: Some(s("vmm")),
            },
        );
        check(
            "Metrics",
            Metrics {
                metrics_path: s("/m"),
            },
        );
        check(
            "ApiError",
            ApiError {
                fault_message: s("x"),
            },
        );
    }

    #[test]
    fn input_event_schemas_match_the_types() {
        check(
            "KeyEvent",
            InputEvent::Key {
                key: Some(s("a")),
                code: Some(30),
                action: KeyAction::Tap,
            },
        );
        check("MoveEvent", InputEvent::Move { x: 1, y: 2 });
        check(
            "ButtonEvent",
            InputEvent::Button {
                button: ButtonName::Left,
                action: ButtonAction::Click,
            },
        );
        check("WheelEvent", InputEvent::Wheel { delta: -1 });
        let doc = doc();
        let s = schema(&doc, "InputEvents");
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["required"], json!(["events"]));
        let events = &s["properties"]["events"];
        assert_eq!(events["minItems"], json!(1));
        assert_eq!(events["maxItems"], json!(crate::input::MAX_INPUT_EVENTS));
        let mapping = events["items"]["discriminator"]["mapping"]
            .as_object()
            .unwrap();
        assert_eq!(
            mapping.len(),
            events["items"]["oneOf"].as_array().unwrap().len()
        );
        for (kind, target) in mapping {
            let name = target.as_str().unwrap().rsplit('/').next().unwrap();
            assert_eq!(
                schema(&doc, name)["properties"]["kind"]["enum"],
                json!([kind])
            );
        }
        // The key names the document lists are the ones the device knows.
        let names = schema(&doc, "KeyEvent")["properties"]["key"]["enum"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(names.len(), 243, "242 names and null");
        assert!(names.contains(&json!("leftshift")) && names.contains(&Value::Null));
    }

    #[test]
    fn serial_schemas_match_the_types() {
        check(
            "SerialLog",
            SerialLog {
                from: 1,
                next: 2,
                data: s("x"),
            },
        );
        check("SerialInput", SerialInput { data: s("ls\n") });
    }
}
