-- Channel binding for clients behind xmpp-lb (Prosody 0.12 and later).
--
-- xmpp-lb ends the client's TLS. With `channel_binding = "pass"` on a
-- backend it computes the channel-binding data of the client's TLS session
-- and sends them first on each connection to the node, in the PROXY protocol
-- v2 header:
--   TLV 0xE0: tls-exporter (RFC 9266, 32 bytes; TLS 1.3 clients)
--   TLV 0xE1: tls-server-end-point (RFC 5929, hash of the proxy's certificate)
-- This module, on the node:
--  * reads and removes that header on connections from the addresses listed
--    in `channel_binding_proxies` (and only there: anybody else's header is
--    left in the stream, where the XML parser refuses it);
--  * gives the SASL handler of such a connection the channel-binding
--    callbacks `tls-exporter` and `tls-server-end-point`, returning the
--    client's values, so that SCRAM-*-PLUS checks the client's proof against
--    the client's own TLS session; a binding of the node's own TLS (the link
--    from the proxy) is never offered on such a connection: it is not the
--    client's;
--  * lets SCRAM-*-PLUS be offered with those types (0.12's SASL library
--    knows only tls-unique for them): the mechanisms are registered again
--    through util.sasl's own registerMechanism, with the extra types;
--  * advertises the types in XEP-0440 <sasl-channel-binding/>.
-- Prosody and its SASL library stay unchanged.
--
-- Configuration (global section):
--   modules_enabled = { ..., "proxy_channel_binding" }
--   channel_binding_proxies = { "192.0.2.10", "10.1.0.0/16" }

local filters = require "util.filters";
local ip = require "util.ip";
local st = require "util.stanza";
local sasl = require "util.sasl";
local scram = require "util.sasl.scram";

local xmlns_sasl_cb = "urn:xmpp:sasl-cb:0";

-- The channel-binding types and the PROXY v2 TLVs that carry them.
local cb_types = { "tls-exporter", "tls-server-end-point" };
local tlv_types = { [0xE0] = "tls-exporter", [0xE1] = "tls-server-end-point" };

local V2_SIGNATURE = "\r\n\r\n\0\r\nQUIT\n";
local V1_PREFIX = "PROXY ";
-- The most address and TLV bytes accepted after the fixed part of a v2 header.
local V2_MAX_PAYLOAD = 2048;
-- Address block length by address family and protocol byte.
local address_length = {
	[0x00] = 0, [0x01] = 0, [0x02] = 0,
	[0x11] = 12, [0x12] = 12,
	[0x21] = 36, [0x22] = 36,
	[0x31] = 216, [0x32] = 216,
};

local trusted_nets = {};
for _, entry in ipairs(module:get_option_array("channel_binding_proxies", {})) do
	local net, bits = ip.parse_cidr(entry);
	if net then
		table.insert(trusted_nets, { net = net, bits = bits });
	else
		module:log("error", "channel_binding_proxies: %q is not an address or a network", entry);
	end
end
if #trusted_nets == 0 then
	module:log("warn", "channel_binding_proxies is empty: no connection gets channel binding");
end

local function trusted(address)
	local addr = address and ip.new_ip(address);
	if not addr then return false; end
	for _, n in ipairs(trusted_nets) do
		if ip.match(addr, n.net, n.bits) then return true; end
	end
	return false;
end

-- A PROXY header at the start of `buffer`. Returns "more" while it may still
-- be one and is incomplete, false if it is none or is malformed, or the
-- number of its bytes and the channel bindings it carries.
local function parse_header(buffer)
	local n = #buffer;
	local head = math.min(n, #V2_SIGNATURE);
	if buffer:sub(1, head) == V2_SIGNATURE:sub(1, head) then
		if n < 16 then return "more"; end
		local ver_cmd, family, hi, lo = buffer:byte(13, 16);
		local len = hi * 256 + lo;
		if len > V2_MAX_PAYLOAD or math.floor(ver_cmd / 16) ~= 2 then return false; end
		if n < 16 + len then return "more"; end
		local bindings = {};
		if ver_cmd % 16 == 1 then -- PROXY (LOCAL carries nothing of a client)
			local skip = address_length[family];
			if not skip or skip > len then return false; end
			local pos, stop = 17 + skip, 16 + len;
			while pos + 2 <= stop do
				local kind, l_hi, l_lo = buffer:byte(pos, pos + 2);
				local l = l_hi * 256 + l_lo;
				if pos + 2 + l > stop then return false; end
				local name = tlv_types[kind];
				if name and l > 0 then
					bindings[name] = buffer:sub(pos + 3, pos + 2 + l);
				end
				pos = pos + 3 + l;
			end
		end
		return 16 + len, bindings;
	end
	head = math.min(n, #V1_PREFIX);
	if buffer:sub(1, head) == V1_PREFIX:sub(1, head) then
		local crlf = buffer:find("\r\n", 1, true);
		if crlf and crlf + 1 <= 107 then return crlf + 1, {}; end
		if crlf or n >= 107 then return false; end
		return "more";
	end
	return false;
end

-- On every new client connection from a configured proxy: take the PROXY
-- header off the first bytes and keep its bindings on the session.
local function on_new_session(session)
	if session.base_type ~= "c2s" or session.proxy_cb_seen then return; end
	session.proxy_cb_seen = true; -- once, however many hosts load the module
	if not trusted(session.ip) then return; end
	local buffer = "";
	local function strip(data)
		buffer = buffer .. data;
		local consumed, bindings = parse_header(buffer);
		if consumed == "more" then return nil; end
		filters.remove_filter(session, "bytes/in", strip);
		local all = buffer;
		buffer = nil;
		if not consumed then
			-- No header (a link without the PROXY protocol): the stream as it came.
			return all;
		end
		if next(bindings) then
			session.proxy_channel_binding = bindings;
			session.log("debug", "Channel binding from proxy %s: %s", session.ip,
				table.concat((function ()
					local names = {};
					for _, name in ipairs(cb_types) do
						if bindings[name] then table.insert(names, name); end
					end
					return names;
				end)(), ", "));
		end
		local rest = all:sub(consumed + 1);
		if rest == "" then return nil; end
		return rest;
	end
	filters.add_filter(session, "bytes/in", strip, 1000);
end
filters.add_filter_hook(on_new_session);

-- SCRAM-*-PLUS may be offered with the types this module supplies.
if not scram.proxy_channel_binding_registered then
	scram.proxy_channel_binding_registered = true;
	scram.init(function (name, backends, f, cb_backends)
		if cb_backends then
			local extended = {};
			for _, t in ipairs(cb_backends) do table.insert(extended, t); end
			for _, t in ipairs(cb_types) do table.insert(extended, t); end
			cb_backends = extended;
		end
		return sasl.registerMechanism(name, backends, f, cb_backends);
	end);
end

-- The SASL handler of a connection with the client's bindings: their
-- callbacks, and no binding of the node's own TLS.
local function with_client_bindings(handler, session)
	local bindings = session and session.proxy_channel_binding;
	if not (handler and bindings and handler.add_cb_handler) then return handler; end
	for _, name in ipairs(cb_types) do
		local value = bindings[name];
		if value then
			handler:add_cb_handler(name, function () return value; end);
		end
	end
	local add = handler.add_cb_handler;
	function handler.add_cb_handler(self, name, f)
		if bindings[name] then return add(self, name, f); end
		return self;
	end
	return handler;
end

-- The auth provider hands out the SASL handlers (mod_saslauth, mod_sasl2):
-- wrap it once it is there.
local wrapped = setmetatable({}, { __mode = "k" });
local function wrap_provider()
	local host = prosody.hosts[module.host];
	local provider = host and host.users;
	if not provider or wrapped[provider] then return; end
	local original = rawget(provider, "get_sasl_handler");
	if not original then return; end
	wrapped[provider] = original;
	provider.get_sasl_handler = function (session)
		return with_client_bindings(original(session), session);
	end
end

module:hook("stream-features", function (event)
	wrap_provider();
end, 1000);

-- XEP-0440: the types this connection can bind to, once SASL is offered.
module:hook("stream-features", function (event)
	local origin, features = event.origin, event.features;
	local bindings = origin.proxy_channel_binding;
	if origin.type ~= "c2s_unauthed" or not bindings or not origin.sasl_handler then return; end
	local cb = st.stanza("sasl-channel-binding", { xmlns = xmlns_sasl_cb });
	for _, name in ipairs(cb_types) do
		if bindings[name] then cb:tag("channel-binding", { type = name }):up(); end
	end
	features:add_child(cb);
end, -100);

function module.unload()
	filters.remove_filter_hook(on_new_session);
	for provider, original in pairs(wrapped) do
		provider.get_sasl_handler = original;
	end
end
