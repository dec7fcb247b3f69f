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
    use crate::router::ROUTES;
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
        match schema["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{at}: no type"))
        {
            "string" => assert!(value.is_string(), "{at}: {value} is not a string"),
            "integer" => assert!(value.is_u64() || value.is_i64(), "{at}: not an integer"),
            "boolean" => assert!(value.is_boolean(), "{at}: not a boolean"),
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
            for op in item.as_object().unwrap().values() {
                assert!(
                    op["responses"].get("400").is_some(),
                    "{route}: no error response"
                );
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
            cpu_template: Some(s("T2")),
            track_dirty_pages: Some(true),
        };
        check("MachineConfig", mc);
        check(
            "MachineConfigPatch",
            MachineConfigPatch {
                vcpu_count: Some(1),
                mem_size_mib: Some(2),
                smt: Some(false),
                cpu_template: Some(s("T2")),
                track_dirty_pages: Some(false),
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
            "Vsock",
            Vsock {
                guest_cid: 3,
                uds_path: s("/v"),
                vsock_id: Some(s("v")),
            },
        );
        for action_type in [
            ActionType::InstanceStart,
            ActionType::SendCtrlAltDel,
            ActionType::FlushMetrics,
            ActionType::Shutdown,
            ActionType::Kill,
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
        for state in ["Not started", "Running", "Paused"] {
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
}
