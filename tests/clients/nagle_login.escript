#!/usr/bin/env escript
%% A login's first step as tsung makes it, with Erlang/OTP's own TLS client: Nagle on (the
%% gen_tcp default), TLS 1.3 without session tickets (the ssl default), the stream header
%% written as soon as TLS is up. Prints, for each of N connections, the microseconds from the
%% header sent to the end of the features received.
%%
%% Usage: nagle_login.escript direct|starttls HOST PORT DOMAIN N
main([Mode, Host, Port, Domain, N]) ->
    ok = ssl:start(),
    Times = [one(list_to_atom(Mode), Host, list_to_integer(Port), Domain)
             || _ <- lists:seq(1, list_to_integer(N))],
    io:format("~w~n", [Times]).

header(Domain) ->
    ["<stream:stream to='", Domain, "' version='1.0' xmlns='jabber:client' "
     "xmlns:stream='http://etherx.jabber.org/streams'>"].

tls_options(Domain) ->
    [binary, {active, false}, {verify, verify_none}, {versions, ['tlsv1.3', 'tlsv1.2']},
     {server_name_indication, Domain}, {alpn_advertised_protocols, [<<"xmpp-client">>]}].

one(direct, Host, Port, Domain) ->
    {ok, S} = ssl:connect(Host, Port, tls_options(Domain), 5000),
    timed(S, Domain);
one(starttls, Host, Port, Domain) ->
    {ok, T} = gen_tcp:connect(Host, Port, [binary, {active, false}], 5000),
    ok = gen_tcp:send(T, header(Domain)),
    tcp_wait(T, <<"</stream:features>">>, <<>>),
    ok = gen_tcp:send(T, "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"),
    tcp_wait(T, <<"<proceed">>, <<>>),
    {ok, S} = ssl:connect(T, tls_options(Domain), 5000),
    timed(S, Domain).

timed(S, Domain) ->
    T0 = erlang:monotonic_time(microsecond),
    ok = ssl:send(S, header(Domain)),
    ssl_wait(S, <<>>),
    T1 = erlang:monotonic_time(microsecond),
    ssl:close(S),
    T1 - T0.

ssl_wait(S, Acc) ->
    case binary:match(Acc, <<"</stream:features>">>) of
        nomatch -> {ok, D} = ssl:recv(S, 0, 5000), ssl_wait(S, <<Acc/binary, D/binary>>);
        _ -> ok
    end.

tcp_wait(T, Needle, Acc) ->
    case binary:match(Acc, Needle) of
        nomatch -> {ok, D} = gen_tcp:recv(T, 0, 5000), tcp_wait(T, Needle, <<Acc/binary, D/binary>>);
        _ -> ok
    end.
