-- On a map miss, ask the Routing Manager where a consumer's connection goes.
-- The manager allocates a Ready instance, waiting a few seconds for one being
-- started if none is Ready (past that it answers 503: the connection is then
-- rejected). It also adds the route to HAProxy's map, so the consumer's
-- next connections take the fast path.

local manager = os.getenv("PORTAL_MANAGER")
local domain = string.lower(os.getenv("PORTAL_DOMAIN") or "consumers.portal.local")

core.register_action("portal_route", { "tcp-req" }, function(txn)
    local sni = txn.f:req_ssl_sni()
    if sni == nil then
        return
    end
    sni = string.lower(sni)
    local uid = string.match(sni, "^([a-z0-9][a-z0-9-]*)%.")
    if uid == nil or sni ~= uid .. "." .. domain then
        return
    end
    local response = core.httpclient():get{ url = manager .. "/v1/routes/" .. uid }
    if response == nil or response.status ~= 200 then
        return
    end
    local address = string.match(response.body, '"address"%s*:%s*"([^"]+)"')
    if address ~= nil then
        txn:set_var("txn.route", address)
    end
end, 0)
