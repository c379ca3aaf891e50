-- Compatibility module for Prosody 0.12 (xmpp-lb fast reconnect): lets the community
-- modules mod_sasl2_fast and mod_sasl2_sm (written against Prosody trunk) run on 0.12.
--
-- Stock 0.12.3 with prosody-modules hg 556bf57d6417 (2023-02-23) fails thus:
--  * mod_sasl2 calls conn:ssl_info() on encrypted streams, a method 0.12's
--    net.server connections lack, so every TLS stream (STARTTLS or direct
--    TLS) dies with a traceback before <stream:features>.
--  * mod_sasl2_fast reads event.stream.from in "advertise-sasl-features", but
--    0.12's mod_c2s fires "stream-features" without `stream`, so every
--    unauthenticated stream dies with a traceback before <stream:features>.
--  * mod_sasl2_fast calls stanza:get_child_attr(), missing in 0.12's
--    util.stanza, on every <authenticate/> carrying <fast/>: a traceback, no
--    answer.
--  * mod_sasl2_sm calls mod_smacks.do_enable() / do_resume(), which 0.12's
--    mod_smacks does not have, so the SASL2 <success> is never sent.
--  * mod_sasl2_fast formats the token expiry with util.datetime.datetime() on
--    a fractional time, which 0.12's version (os.date) rejects on Lua 5.3+,
--    so the SASL2 <success> is never sent.
--  * mod_sasl2_sm and mod_sasl2_bind2 build their <failed/> answers (SM
--    enable or resume refused, bind refused) with stanza:add_error(), also
--    missing in 0.12: a traceback, no <success/>.
--
-- And one bug of the snapshot itself, whatever the Prosody version: on an
-- inline resume mod_sasl2_sm swaps event.session for the resumed session,
-- and mod_sasl2_fast then reads this authentication's state (SASL handler,
-- client id, token request) off the resumed session, where it is stale (a
-- token request from the first login: a new token on every resume) or gone
-- (no SASL handler: a traceback, no <success/>, unless the first login had
-- asked for a token).
--
-- This module supplies exactly those pieces and changes nothing else: the
-- wire format comes from the community modules and 0.12's mod_smacks.

local st = require "util.stanza";
local errors = require "util.error";
local filters = require "util.filters";
local dt = require "util.datetime";

module:depends("sasl2");
local smacks = module:depends("smacks");
local c2s_sessions = module:shared("/*/c2s/sessions");

local xmlns_stanzas = "urn:ietf:params:xml:ns:xmpp-stanzas";

-- util.stanza methods from later Prosody versions.
local stanza_mt = st.stanza_mt;
if not stanza_mt.get_child_attr then
	function stanza_mt:get_child_attr(name, xmlns, attr)
		local child = self:get_child(name, xmlns);
		if child then return child.attr[attr]; end
	end
end
if not stanza_mt.add_error then
	-- Same layout as 0.12's st.error_reply() puts inside a stanza.
	function stanza_mt:add_error(err)
		self:tag("error", { type = err.type or "cancel" })
			:tag(err.condition or "undefined-condition", { xmlns = xmlns_stanzas }):up();
		if err.text then
			self:text_tag("text", err.text, { xmlns = xmlns_stanzas });
		end
		return self:up();
	end
end

-- conn:ssl_info() for mod_sasl2 (it looks for channel bindings with it; 0.12
-- offers none, so only the -NONE FAST mechanism is offered over TLS too).
module:hook("stream-features", function (event)
	local conn = event.origin.conn;
	if event.origin.encrypted and conn and not conn.ssl_info then
		function conn:ssl_info()
			local sock = self:socket();
			return sock and sock.info and sock:info();
		end
	end
end, 10);

-- util.datetime.datetime() of 0.12 wants whole seconds.
local datetime = dt.datetime;
function dt.datetime(t)
	return datetime(t and math.floor(t));
end

-- Remember the 'from' of each client stream header (0.12's util.xmppstream
-- hands it to session:stream_attrs() when replying to the header) and give it
-- to "advertise-sasl-features", which mod_sasl2_fast needs to offer FAST.
local function remember_stream_from(session)
	if session.type ~= "c2s_unauthed" or session.stream_attrs then return end
	function session:stream_attrs(_, client_from)
		self.sasl2_compat_stream_from = client_from;
	end
end
filters.add_filter_hook(remember_stream_from);
function module.unload()
	filters.remove_filter_hook(remember_stream_from);
	dt.datetime = datetime;
end

module:hook("advertise-sasl-features", function (event)
	if event.stream == nil then
		event.stream = { from = event.origin.sasl2_compat_stream_from };
	end
end, 1000);

-- do_enable / do_resume for mod_sasl2_sm, built on 0.12's handle_enable and
-- handle_resume. Those write their answer (and, on resume, the unacked
-- stanzas and an <r/>) straight to the client; SASL2 wants the answer inside
-- <success/> and the rest after it. So hold back what they send, hand the
-- answer to mod_sasl2_sm, and let finish() (called after <success/> went
-- out) send the rest.
local function hold_output(session)
	local held = {};
	local function hold(stanza) held[#held+1] = stanza; return nil; end
	filters.add_filter(session, "stanzas/out", hold, 1e9);
	return held, function () filters.remove_filter(session, "stanzas/out", hold); end;
end

local function failure(answer)
	local condition, h = "undefined-condition", nil;
	if answer then
		h = tonumber(answer.attr.h);
		for tag in answer:childtags(nil, xmlns_stanzas) do
			condition = tag.name;
			break;
		end
	end
	return errors.new({ type = "cancel", condition = condition }, { h = h });
end

local function call_held(session, f, request)
	local held, release = hold_output(session);
	local ok, err = pcall(f, session, request, request.attr.xmlns);
	release();
	if not ok then error(err, 0); end
	return held;
end

rawset(smacks, "do_enable", function (session, request)
	local held = call_held(session, smacks.handle_enable, request);
	local answer = held[1];
	if not answer or answer.name ~= "enabled" then
		return nil, failure(answer);
	end
	return {
		type = "enabled";
		id = answer.attr.id;
		resume_max = answer.attr.max;
		session = session;
		finish = function () end;
	};
end);

rawset(smacks, "do_resume", function (session, request)
	local held = call_held(session, smacks.handle_resume, request);
	local answer = table.remove(held, 1);
	if not answer or answer.name ~= "resumed" then
		return nil, failure(answer);
	end
	local resumed = c2s_sessions[session.conn];
	return {
		type = "resumed";
		id = answer.attr.previd;
		session = resumed;
		finish = function ()
			-- Already counted in the smacks queue: send them as they are.
			session.resending_unacked, resumed.resending_unacked = true, true;
			for _, stanza in ipairs(held) do
				resumed.send(stanza);
			end
			session.resending_unacked, resumed.resending_unacked = nil, nil;
		end;
	};
end);

-- Carry this authentication's state over to a resumed session (after
-- mod_sasl2_sm's resume at priority 110, before mod_sasl2_fast at 75).
module:hook("sasl2/c2s/success", function (event)
	event.sasl2_compat_authenticated = event.session;
end, 1001);
module:hook("sasl2/c2s/success", function (event)
	local authenticated, session = event.sasl2_compat_authenticated, event.session;
	if authenticated and session ~= authenticated then
		session.sasl_handler = authenticated.sasl_handler;
		session.client_id = authenticated.client_id;
		session.fast_token_request = authenticated.fast_token_request;
	end
end, 105);
