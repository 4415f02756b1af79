-- IoT Agent config groups and devices (per tenant, i.e. Fiware-Service), when each device last
-- sent a measure, and the catalog's live dataset definitions. The uniqueness rules of
-- provisioning are constraints, so two workers creating the same group or device at once
-- cannot both succeed. rid keeps creation order, which listings follow.

CREATE TABLE iot_groups(
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    service_path text COLLATE "C" NOT NULL,
    resource text COLLATE "C" NOT NULL,
    apikey text COLLATE "C" NOT NULL,
    -- json, not jsonb: the document comes back with its members in the order they were written
    doc json NOT NULL,
    -- across tenants: a south-bound request names no service, so the apikey alone must lead
    -- to one group
    CONSTRAINT iot_groups_resource_apikey UNIQUE(resource, apikey)
);
CREATE INDEX iot_groups_tenant ON iot_groups(tenant, rid);
CREATE INDEX iot_groups_apikey ON iot_groups(apikey, rid);

CREATE TABLE iot_devices(
    rid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    service_path text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    doc json NOT NULL,
    CONSTRAINT iot_devices_tenant_device UNIQUE(tenant, device_id)
);
CREATE INDEX iot_devices_tenant ON iot_devices(tenant, rid);

-- no foreign key to iot_devices: a measure may be recorded just as its device is deleted
CREATE TABLE iot_device_status(
    tenant text COLLATE "C" NOT NULL,
    device_id text COLLATE "C" NOT NULL,
    last_seen double precision NOT NULL,
    silent boolean NOT NULL DEFAULT false,
    PRIMARY KEY(tenant, device_id)
);

CREATE TABLE catalog_live(
    -- creation order, which dumps follow (a replaced definition keeps its place)
    rid bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name text COLLATE "C" PRIMARY KEY,
    tenant text COLLATE "C" NOT NULL,
    query text NOT NULL,
    created double precision NOT NULL
);
