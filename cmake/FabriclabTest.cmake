# The GoogleTest executables of tests/CMakeLists.txt, one call each.
#
# fabriclab_test(<target> <source>... [LIBS <lib>...] [RUNS agent|orchestrator|cli...]
#                [DEFINES <name>=<value>...] [GUEST <file>...]
#                [LABEL <label> TIMEOUT <seconds> [IMAGES] [SERIAL] [LOCK <resource>]])
#
#   An executable <target> from the sources, linked with LIBS and GTest::gtest_main.
#   RUNS: the project programs the test spawns. Each is built before the test and its path is
#     compiled in: agent -> FABRICLAB_AGENT_BIN (fabriclab-agent), orchestrator ->
#     FABRICLAB_ORCHESTRATOR_BIN (fabriclab-orchestrator), cli -> FABRICLAB_CLI_BIN (fabriclab,
#     which launches the agent and the orchestrator, so both are built too).
#   DEFINES: further compile definitions, after the RUNS ones.
#   GUEST: files of the guest program (testbed/guest/<file>.cpp) compiled into the test the way
#     the guest is built: Boost.JSON header-only, against fabriclab::guestproto.
#   LABEL ...: discover the executable's tests now (fabriclab_discover_tests below); without it the
#     caller discovers them, e.g. once per TEST_FILTER.
#
# fabriclab_discover_tests(<target> [FILTER <gtest filter>] LABEL <label> TIMEOUT <seconds>
#                          [IMAGES] [SERIAL] [LOCK <resource>])
#
#   gtest_discover_tests with these ctest properties: LABELS, TIMEOUT, RUN_SERIAL (SERIAL: alone on
#   the machine), RESOURCE_LOCK (LOCK: one test holding the resource at a time) and, with IMAGES,
#   FABRICLAB_IMAGES_DIR in the environment (the guest images the build makes).

set(_fabriclab_discover_flags IMAGES SERIAL)
set(_fabriclab_discover_values FILTER LABEL TIMEOUT LOCK)

function(fabriclab_discover_tests target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "${_fabriclab_discover_flags}"
                        "${_fabriclab_discover_values}" "")
  if(arg_UNPARSED_ARGUMENTS OR NOT arg_LABEL OR NOT arg_TIMEOUT)
    message(FATAL_ERROR "fabriclab_discover_tests(${target}): needs LABEL and TIMEOUT, "
                        "and takes no '${arg_UNPARSED_ARGUMENTS}'")
  endif()
  set(filter "")
  if(arg_FILTER)
    set(filter TEST_FILTER "${arg_FILTER}")
  endif()
  set(props LABELS ${arg_LABEL} TIMEOUT ${arg_TIMEOUT})
  if(arg_SERIAL)
    list(APPEND props RUN_SERIAL TRUE)
  endif()
  if(arg_LOCK)
    list(APPEND props RESOURCE_LOCK ${arg_LOCK})
  endif()
  if(arg_IMAGES)
    list(APPEND props ENVIRONMENT "FABRICLAB_IMAGES_DIR=${FABRICLAB_IMAGES_DIR}")
  endif()
  gtest_discover_tests(${target} ${filter} PROPERTIES ${props})
endfunction()

# The programs a test may spawn: RUNS keyword -> compile definition, target, targets to build.
set(_fabriclab_run_agent FABRICLAB_AGENT_BIN fabriclab-agent fabriclab-agent)
set(_fabriclab_run_orchestrator FABRICLAB_ORCHESTRATOR_BIN fabriclab-orchestrator
    fabriclab-orchestrator)
set(_fabriclab_run_cli FABRICLAB_CLI_BIN fabriclab fabriclab fabriclab-agent fabriclab-orchestrator)

function(fabriclab_test target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "${_fabriclab_discover_flags}"
                        "${_fabriclab_discover_values}" "LIBS;RUNS;DEFINES;GUEST")
  if(NOT arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "fabriclab_test(${target}): no source files")
  endif()
  set(sources ${arg_UNPARSED_ARGUMENTS})
  foreach(file IN LISTS arg_GUEST)
    list(APPEND sources ${FABRICLAB_GUEST_DIR}/${file}.cpp)
  endforeach()
  add_executable(${target} ${sources})

  set(defines "")
  foreach(program IN LISTS arg_RUNS)
    if(NOT DEFINED _fabriclab_run_${program})
      message(FATAL_ERROR "fabriclab_test(${target}): RUNS agent, orchestrator or cli, not '${program}'")
    endif()
    set(run ${_fabriclab_run_${program}})
    list(POP_FRONT run define program_target)
    list(APPEND defines "${define}=\"$<TARGET_FILE:${program_target}>\"")
    add_dependencies(${target} ${run})
  endforeach()
  list(APPEND defines ${arg_DEFINES})

  set(libs ${arg_LIBS})
  if(arg_GUEST)
    # As testbed/guest/CMakeLists.txt builds the guest: its own folder's headers, Boost.JSON
    # compiled in (json_impl), never an auto-linked Boost library.
    target_include_directories(${target} PRIVATE ${FABRICLAB_GUEST_DIR})
    list(PREPEND defines BOOST_JSON_NO_LIB BOOST_CONTAINER_NO_LIB)
    list(APPEND libs fabriclab::guestproto Boost::headers)
  endif()
  if(defines)
    target_compile_definitions(${target} PRIVATE ${defines})
  endif()
  target_link_libraries(${target} PRIVATE ${libs} GTest::gtest_main)

  if(arg_LABEL)
    set(discover LABEL ${arg_LABEL} TIMEOUT ${arg_TIMEOUT})
    foreach(flag IN LISTS _fabriclab_discover_flags)
      if(arg_${flag})
        list(APPEND discover ${flag})
      endif()
    endforeach()
    foreach(key FILTER LOCK)
      if(DEFINED arg_${key})
        list(APPEND discover ${key} "${arg_${key}}")
      endif()
    endforeach()
    fabriclab_discover_tests(${target} ${discover})
  elseif(arg_TIMEOUT OR arg_IMAGES OR arg_SERIAL OR arg_LOCK OR arg_FILTER)
    message(FATAL_ERROR "fabriclab_test(${target}): test properties without a LABEL")
  endif()
endfunction()
